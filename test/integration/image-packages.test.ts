/**
 * Recipes with real Debian packages, end to end, in one image and one boot:
 * images/recipes/build.json with python.json's packages added builds (the
 * closure from apt's index, .debs cached by digest), boots under the real
 * mvirtd, and what people expect works in the guest: `python3` prints 42 (the
 * README's `mvirt run` examples), a C program compiles with `cc` (an
 * alternative from gcc's postinst, which is read, not run) through the
 * README's `tar … | mvirt run … make test` and runs, git commits, curl finds
 * its libraries and the CA bundle ca-certificates' postinst would have made;
 * the root stays the read-only squashfs.
 *
 * Cost, measured on the shared machine under load 15-19 (2 cores): with the
 * image cached ~75-120 s (the boot and the jobs); on a fresh machine the
 * build adds the downloads (103 MiB, ~10 s from deb.debian.org here) and the
 * root disk (~45 s).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import type { DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';
import { readManifest } from '../../images/manifest.js';
import { mvirt } from '../support/cli.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const JOB_MS = 180_000;
const BUILD_MS = 20 * 60_000;
const DATA = path.join(REPO, 'test-output/data');
const IMAGE = 'packages-test';
const VM = 'pkgs';

/** A project with a C program and a Makefile whose `test` target builds and runs it, as a tar. */
async function cProject(): Promise<Buffer> {
  const dir = await tempDataDir('mvirt-pkgs-src-');
  await writeFile(
    path.join(dir, 'hello.c'),
    '#include <stdio.h>\nint main(void) { printf("hello from C, %d\\n", 6 * 7); return 0; }\n',
  );
  await writeFile(
    path.join(dir, 'Makefile'),
    'hello: hello.c\n\tcc -O2 -o $@ hello.c\ntest: hello\n\t./hello\n',
  );
  return execFileSync('tar', ['-c', '-C', dir, '.']);
}

describe(
  'images with Debian packages in a real microVM',
  { timeout: BUILD_MS + BOOT_MS + 6 * JOB_MS },
  () => {
    let c: RpcClient;
    let daemon: DaemonAddress;
    const run = async (vm: string, argv: string[], stdin?: string) =>
      ok(
        await c.call(
          'job.run',
          { vm, argv, wait: true, ...(stdin === undefined ? {} : { stdin }) },
          { timeoutMs: JOB_MS },
        ),
      );

    before(async () => {
      // One image, one boot: build.json's recipe with python.json's packages added (the
      // recipes themselves are checked in test/unit/images/deb-closure.test.ts).
      const read = async (r: string) =>
        JSON.parse(await readFile(path.join(REPO, 'images/recipes', r), 'utf8')) as {
          packages: string[];
        };
      const [py, build] = [await read('python.json'), await read('build.json')];
      const recipe = path.join(await tempDataDir('mvirt-pkgs-recipe-'), `${IMAGE}.json`);
      const packages = [...new Set([...build.packages, ...py.packages])];
      await writeFile(recipe, JSON.stringify({ ...build, name: IMAGE, packages }));
      // Where `npm test` keeps images (the daemon's --images-dir); a cached build when up to date.
      await imagesDir({ recipe, dataDir: DATA });
      const q = await qemuDaemon(await tempDataDir('mvirt-pkgs-it-'));
      c = q.c;
      daemon = q.d;
      ok(await c.call('vm.create', { name: VM, image: IMAGE, memoryMiB: 512 }));
      const vm = ok(
        await c.call('vm.start', { vm: VM, wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(vm.pid);
      assert.equal(vm.state, 'ready');
    });

    it('the manifest records every package with its version and sha256', async () => {
      const m = await readManifest(path.join(DATA, 'images', IMAGE));
      const debs = m.inputs.flatMap((i) => (i.kind === 'deb' && i.role !== 'kernel' ? [i] : []));
      const names = new Set(debs.map((d) => d.name));
      for (const n of [
        'python3',
        'libpython3.11-stdlib',
        'busybox-static',
        'gcc-12',
        'libc6-dev',
        'git',
        'curl',
        'ca-certificates',
        'make',
      ])
        assert.ok(names.has(n), n);
      assert.ok(debs.every((d) => d.version !== '' && /^[0-9a-f]{64}$/.test(d.sha256)));
      assert.equal(m.disk.readOnly, true);
    });

    it("python: `mvirt run … -- python3 -c 'print(6*7)'` prints 42", async () => {
      await explained(async () => {
        const r = await mvirt(['run', '--vm', VM, '--', 'python3', '-c', 'print(6*7)'], {
          daemon,
        });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, '42\n');
        // The README's `echo … | mvirt run … -- python3 -`, with the standard library.
        const s = await mvirt(['run', '--vm', VM, '--', 'python3', '-'], {
          daemon,
          input: 'import json, sqlite3, hashlib\nprint(json.dumps({"n": 6 * 7}))\n',
        });
        assert.equal(s.code, 0, s.stderr);
        assert.equal(s.stdout, '{"n": 42}\n');
      });
    });

    it("build: the README's `tar … | mvirt run … make -C /tmp/p test` builds with cc and runs", async () => {
      await explained(async () => {
        const r = await mvirt(
          [
            'run',
            '--vm',
            VM,
            '--',
            'sh',
            '-c',
            'mkdir /tmp/p && tar -x -C /tmp/p && make -C /tmp/p test',
          ],
          { daemon, input: await cProject() },
        );
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /cc -O2 -o hello hello\.c\n\.\/hello\nhello from C, 42\n/);
      });
    });

    it('build: git commits, curl runs with the CA bundle, the root is the read-only squashfs', async () => {
      await explained(async () => {
        const git = await run(VM, [
          'sh',
          '-c',
          'cd /tmp && git init -q r && cd r && echo x > f && git add f && git -c user.name=t -c user.email=t@e commit -q -m one && git log --format=%s',
        ]);
        assert.equal(git.exitCode, 0, git.stderr);
        assert.equal(git.stdout, 'one\n');
        const curl = await run(VM, ['curl', '--version']);
        assert.equal(curl.exitCode, 0, curl.stderr);
        assert.match(curl.stdout ?? '', /^curl \d+\.\d+.*Protocols: .*https/s);
        const certs = await run(VM, [
          'sh',
          '-c',
          'grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt; readlink /usr/bin/cc; readlink /etc/alternatives/cc; test -s /etc/ld.so.cache && echo ld.so.cache; grep -c " squashfs ro" /proc/mounts',
        ]);
        assert.equal(certs.exitCode, 0, certs.stderr);
        const [n, cc, alt, cache, ro] = (certs.stdout ?? '').trim().split('\n');
        assert.ok(Number(n) > 100, `${n} certificates in the bundle`);
        assert.deepEqual([cc, alt, cache], ['/etc/alternatives/cc', '/usr/bin/gcc', 'ld.so.cache']);
        assert.equal(ro, '1', 'the packages are on the read-only squashfs');
      });
    });
  },
);
