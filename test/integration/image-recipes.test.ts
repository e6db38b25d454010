/**
 * The shipped recipes with real Debian packages, end to end, each on its own:
 * images/recipes/python.json and images/recipes/build.json build as they are
 * (the closure from apt's index, .debs cached by digest and shared between
 * them), both boot at once under one real mvirtd, and the commands each
 * exists for work in its guest and not in the other: python3 runs a script
 * from stdin with json, hashlib, ssl and sqlite3 (the README's `python3 -`)
 * and prints 42; `cc` (an alternative from gcc's postinst, read, not run)
 * compiles through the README's `tar … | mvirt run … make test` and the
 * program runs, git commits, curl fetches from a local HTTP server and finds
 * the CA bundle ca-certificates' postinst would have made; each root stays
 * the read-only squashfs.
 *
 * Cost, measured on the shared 2-core machine (2026-12-07), images cached:
 * 18-41 s at load 3-5 (the one combined image it replaces, one boot: 17-18 s
 * back to back), 107-172 s at load 10-14 (that one: 69 s), the two boots
 * overlapping and the python cases running while the build VM boots. On a
 * fresh machine the builds add python 6.6 s + build 13.0 s (the combined
 * image: 19.2 s) and the downloads (103 MiB, the same either way: the .debs
 * both use are cached once, by digest).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import type { DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';
import { readManifest, type Manifest } from '../../images/manifest.js';
import { cacheDir } from '../../images/paths.js';
import { mvirt } from '../support/cli.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const JOB_MS = 180_000;
/** A job that hangs is killed before the call gives up, so the failure shows what it printed. */
const JOB_LIMIT_MS = 120_000;
const BUILD_MS = 20 * 60_000;
const DATA = path.join(REPO, 'test-output/data');
/** The recipes' own names: the images are what `mvirt run --image python|build` boots. */
const PY = 'python';
const BUILD = 'build';

/** A project with a C program and a Makefile whose `test` target builds and runs it, as a tar. */
async function cProject(): Promise<Buffer> {
  const dir = await tempDataDir('mvirt-recipes-src-');
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

/** Which of `cmds` the guest has (`command -v`'s path, or `no CMD`), then how many read-only squashfs mounts (1: the root disk under the overlay). */
const which = (cmds: string[]): string[] => [
  'sh',
  '-c',
  `for c in ${cmds.join(' ')}; do command -v $c || echo "no $c"; done; grep -c " squashfs ro" /proc/mounts`,
];

const debs = (m: Manifest) =>
  new Map(m.inputs.flatMap((i) => (i.kind === 'deb' && i.role !== 'kernel' ? [[i.name, i]] : [])));

describe(
  'the python and build recipes, each built and booted on its own',
  { timeout: 2 * BUILD_MS + BOOT_MS + 8 * JOB_MS },
  () => {
    let c: RpcClient;
    let daemon: DaemonAddress;
    /** Each VM's boot, started in before(): its cases await it. */
    const booted = new Map<string, Promise<void>>();
    const run = async (vm: string, argv: string[], stdin?: string) =>
      ok(
        await c.call(
          'job.run',
          {
            vm,
            argv,
            wait: true,
            timeoutMs: JOB_LIMIT_MS,
            ...(stdin === undefined ? {} : { stdin }),
          },
          { timeoutMs: JOB_MS },
        ),
      );

    before(async () => {
      // Into test-output/data/images, the daemon's --images-dir (as `npm test` keeps images);
      // one after the other (each build's root disk takes both cores), a copy when cached.
      for (const r of [PY, BUILD])
        await imagesDir({ recipe: `images/recipes/${r}.json`, dataDir: DATA });
      const q = await qemuDaemon(await tempDataDir('mvirt-recipes-it-'));
      c = q.c;
      daemon = q.d;
      // The python VM at mvirtd's default size (256 MiB, what `mvirt run --image python`
      // gets), the build VM at the README's --memory 512. Both boot at once, one on each
      // core, and each VM's cases wait for its own boot only: the python jobs run while
      // the build VM may still be booting.
      ok(await c.call('vm.create', { name: PY, image: PY }));
      ok(await c.call('vm.create', { name: BUILD, image: BUILD, memoryMiB: 512 }));
      for (const vm of [PY, BUILD]) {
        const p = (async () => {
          const v = ok(
            await c.call('vm.start', { vm, wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
          );
          trackPid(v.pid);
          assert.equal(v.state, 'ready');
        })();
        p.catch(() => undefined); // reported by the cases that wait for it
        booted.set(vm, p);
      }
    });

    it('each manifest records its own packages, with versions and sha256, from one shared cache', async () => {
      const py = debs(await readManifest(path.join(DATA, 'images', PY)));
      const build = debs(await readManifest(path.join(DATA, 'images', BUILD)));
      for (const n of [
        'python3',
        'python3.11',
        'libpython3.11-stdlib',
        'libssl3',
        'ca-certificates',
        'busybox-static',
      ])
        assert.ok(py.has(n), `python: ${n}`);
      for (const n of [
        'make',
        'gcc-12',
        'libc6-dev',
        'git',
        'curl',
        'ca-certificates',
        'busybox-static',
      ])
        assert.ok(build.has(n), `build: ${n}`);
      for (const n of ['make', 'gcc-12', 'git', 'curl']) assert.ok(!py.has(n), `python: no ${n}`);
      assert.ok(!build.has('python3'), 'build: no python3');
      for (const m of [py, build])
        assert.ok(
          [...m.values()].every((d) => d.version !== '' && /^[0-9a-f]{64}$/.test(d.sha256)),
        );
      // What both need from apt's index is one .deb in the cache, by digest (python's ssl
      // and curl both link OpenSSL).
      const ssl = py.get('libssl3');
      assert.equal(ssl?.sha256, build.get('libssl3')?.sha256);
      assert.ok(existsSync(path.join(cacheDir(), 'debs', 'sha256', `${ssl!.sha256}.deb`)));
    });

    it('python: `mvirt run … -- python3 -` runs a script from stdin with json, hashlib, ssl and sqlite3', async () => {
      await explained(async () => {
        await booted.get(PY);
        const r = await mvirt(
          ['run', '--vm', PY, '--timeout', '120', '--', 'python3', '-c', 'print(6*7)'],
          {
            daemon,
          },
        );
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, '42\n');
        const s = await mvirt(['run', '--vm', PY, '--timeout', '120', '--', 'python3', '-'], {
          daemon,
          input: [
            'import hashlib, json, sqlite3, ssl, sys',
            'ctx = ssl.create_default_context()',
            'db = sqlite3.connect(":memory:")',
            'print(json.dumps({',
            '  "py": list(sys.version_info[:2]),',
            '  "sha256": hashlib.sha256(b"mvirt").hexdigest(),',
            '  "ssl": ssl.OPENSSL_VERSION.split()[0], "tls13": ssl.HAS_TLSv1_3,',
            '  "verify": ctx.verify_mode == ssl.CERT_REQUIRED,',
            '  "sql": db.execute("select 6 * 7").fetchone()[0],',
            '  "cas": open(ssl.get_default_verify_paths().cafile).read().count("BEGIN CERTIFICATE") > 100,',
            '}))',
            '',
          ].join('\n'),
        });
        assert.equal(s.code, 0, s.stderr);
        assert.deepEqual(JSON.parse(s.stdout), {
          py: [3, 11],
          sha256: createHash('sha256').update('mvirt').digest('hex'),
          ssl: 'OpenSSL',
          tls13: true,
          verify: true,
          sql: 42,
          cas: true, // verified HTTPS from Python has the CA bundle to verify with
        });
        const has = await run(PY, which(['python3', 'make', 'cc', 'git', 'curl']));
        assert.equal(has.exitCode, 0, `${has.stdout}${has.stderr}`);
        assert.equal(has.stdout, '/usr/bin/python3\nno make\nno cc\nno git\nno curl\n1\n');
      });
    });

    it("build: the README's `tar … | mvirt run … make -C /tmp/p test` builds with cc and runs", async () => {
      await explained(async () => {
        await booted.get(BUILD);
        const r = await mvirt(
          [
            'run',
            '--vm',
            BUILD,
            '--timeout',
            '120',
            '--',
            'sh',
            '-c',
            'mkdir /tmp/p && tar -x -C /tmp/p && make -C /tmp/p test',
          ],
          { daemon, input: await cProject() },
        );
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /cc -O2 -o hello hello\.c\n\.\/hello\nhello from C, 42\n/);
        const has = await run(BUILD, which(['make', 'cc', 'gcc', 'git', 'curl', 'python3']));
        assert.equal(has.exitCode, 0, `${has.stdout}${has.stderr}`);
        assert.equal(
          has.stdout,
          '/usr/bin/make\n/usr/bin/cc\n/usr/bin/gcc\n/usr/bin/git\n/usr/bin/curl\nno python3\n1\n',
        );
      });
    });

    it('build: git commits, curl fetches over HTTP and has the CA bundle', async () => {
      await explained(async () => {
        await booted.get(BUILD);
        const git = await run(BUILD, [
          'sh',
          '-c',
          'cd /tmp && git init -q r && cd r && echo x > f && git add f && git -c user.name=t -c user.email=t@e commit -q -m one && git log --format=%s',
        ]);
        assert.equal(git.exitCode, 0, git.stderr);
        assert.equal(git.stdout, 'one\n');
        // busybox httpd listens before it goes to the background, so the fetch needs no wait;
        // started through a link named httpd so that `pkill -x httpd` stops only it.
        const curl = await run(BUILD, [
          'sh',
          '-c',
          'mkdir /tmp/www && echo "served, 42" > /tmp/www/x && ln -s /bin/busybox /tmp/httpd && /tmp/httpd -p 127.0.0.1:8080 -h /tmp/www && curl -fsS -m 60 http://127.0.0.1:8080/x; e=$?; pkill -x httpd; curl --version | head -1; exit $e',
        ]);
        assert.equal(curl.exitCode, 0, curl.stderr);
        assert.match(curl.stdout ?? '', /^served, 42\ncurl \d+\.\d+\.\d+ .*OpenSSL/);
        const certs = await run(BUILD, [
          'sh',
          '-c',
          'curl --version | grep -c "^Protocols: .*https"; grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt; readlink /usr/bin/cc; readlink /etc/alternatives/cc; test -s /etc/ld.so.cache && echo ld.so.cache',
        ]);
        assert.equal(certs.exitCode, 0, certs.stderr);
        const [https, n, cc, alt, cache] = (certs.stdout ?? '').trim().split('\n');
        assert.equal(https, '1', 'curl speaks https');
        assert.ok(Number(n) > 100, `${n} certificates in the bundle`);
        assert.deepEqual([cc, alt, cache], ['/etc/alternatives/cc', '/usr/bin/gcc', 'ld.so.cache']);
      });
    });
  },
);
