/**
 * Recipes with real Debian packages, end to end: images/recipes/python.json
 * and images/recipes/build.json build (their closures from apt's index,
 * cached by digest), boot under the real mvirtd (both VMs at once, one boot
 * each), and what people expect works in the guest: `python3` prints 42 (the
 * README's `mvirt run` example), a C program compiles with `cc` (an
 * alternative from gcc's postinst) through `make test` and runs, git commits,
 * curl finds its libraries and the CA bundle that ca-certificates' postinst
 * would have made; the root stays the read-only squashfs.
 *
 * Cost (idle machine, images and packages cached): ~40-60 s, mostly the two
 * boots. On a fresh machine the builds add the downloads (python 18 MiB,
 * build 84 MiB: ~10 s from deb.debian.org here) and the squashfs (~30 s and
 * ~60 s on 2 cores).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
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
      // Where `npm test` keeps images (the daemon's --images-dir); cached builds when up to date.
      for (const recipe of ['images/recipes/python.json', 'images/recipes/build.json'])
        await imagesDir({ recipe, dataDir: DATA });
      const q = await qemuDaemon(await tempDataDir('mvirt-pkgs-it-'));
      c = q.c;
      daemon = q.d;
      ok(await c.call('vm.create', { name: 'py', image: 'python', memoryMiB: 256 }));
      ok(await c.call('vm.create', { name: 'cc', image: 'build', memoryMiB: 512 }));
      const started = await Promise.all(
        ['py', 'cc'].map(async (vm) =>
          ok(await c.call('vm.start', { vm, wait: true }, { timeoutMs: BOOT_MS + 10_000 })),
        ),
      );
      for (const vm of started) {
        trackPid(vm.pid);
        assert.equal(vm.state, 'ready');
      }
    });

    it('the manifests record every package with its version and sha256', async () => {
      for (const [image, must] of [
        ['python', ['python3', 'libpython3.11-stdlib', 'busybox-static']],
        ['build', ['gcc-12', 'libc6-dev', 'git', 'curl', 'ca-certificates', 'make']],
      ] as const) {
        const m = await readManifest(path.join(DATA, 'images', image));
        const debs = m.inputs.filter((i) => i.kind === 'deb' && i.role !== 'kernel');
        for (const n of must)
          assert.ok(
            debs.some((d) => d.kind === 'deb' && d.name === n),
            `${image}: ${n}`,
          );
        assert.ok(
          debs.every(
            (d) => d.kind === 'deb' && d.version !== '' && /^[0-9a-f]{64}$/.test(d.sha256),
          ),
        );
        assert.equal(m.disk.readOnly, true);
      }
    });

    it("python: `mvirt run … -- python3 -c 'print(6*7)'` prints 42", async () => {
      await explained(async () => {
        const r = await mvirt(['run', '--vm', 'py', '--', 'python3', '-c', 'print(6*7)'], {
          daemon,
        });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, '42\n');
        // The README's `echo … | mvirt run … -- python3 -`, with the standard library.
        const s = await mvirt(['run', '--vm', 'py', '--', 'python3', '-'], {
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
            'cc',
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
        const git = await run('cc', [
          'sh',
          '-c',
          'cd /tmp && git init -q r && cd r && echo x > f && git add f && git -c user.name=t -c user.email=t@e commit -q -m one && git log --format=%s',
        ]);
        assert.equal(git.exitCode, 0, git.stderr);
        assert.equal(git.stdout, 'one\n');
        const curl = await run('cc', ['curl', '--version']);
        assert.equal(curl.exitCode, 0, curl.stderr);
        assert.match(curl.stdout ?? '', /^curl \d+\.\d+.*Protocols: .*https/s);
        const certs = await run('cc', [
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
