/**
 * Container images imported through mvirtd (image.import from
 * --image-import-dir) and run in a real microVM under QEMU: an OCI layout
 * made here (two layers, the second whiting out a file of the first; a
 * config with Env, WorkingDir, User and Entrypoint) boots once, and its jobs
 * see the second layer's file and not the whited-out one, with the image's
 * environment, working directory and user, and their own overriding them. A
 * `docker save` archive of the same image imports to the same root disk (so
 * it needs no boot of its own). Hostile archives (each escape kind, a device
 * node, a damaged file) are refused and leave nothing in the images folder;
 * image.delete of the image a VM uses is refused. One VM boot.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import type { RpcClient } from '../../harness/client.js';
import { startMvirt } from '../support/cli.js';
import {
  dockerSaveTar,
  makeTar,
  writeOciLayout,
  type Entry,
  type ImageSpec,
} from '../support/oci.js';
import {
  BOOT_MS,
  explained,
  IMAGES,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const JOB_MS = 120_000;
const LONG = { timeoutMs: 300_000 };

/** An OCI layout as a tar file (what `skopeo copy … oci-archive:` makes). */
async function ociTar(work: string, file: string, spec: ImageSpec): Promise<void> {
  const dir = path.join(work, `${path.basename(file)}.d`);
  await writeOciLayout(dir, spec);
  execFileSync('tar', ['-C', dir, '-cf', file, '.']);
}

async function refusedImport(
  c: RpcClient,
  file: string,
  code: string,
  words: RegExp,
): Promise<void> {
  const r = await c.call('image.import', { file, name: 'hostile' }, LONG);
  assert.equal(r.ok, false, `${file} was imported`);
  if (r.ok) return;
  assert.equal(r.error.code, code, `${file}: ${r.error.message}`);
  assert.match(r.error.message, words, file);
}

test('an imported container image boots and runs its jobs', { skip, timeout: 900_000 }, () =>
  explained(async () => {
    const data = await tempDataDir('mvirt-oci-');
    const images = path.join(data, 'images');
    const importDir = path.join(data, 'import');
    const work = path.join(data, 'work');
    await mkdir(images, { recursive: true });
    await mkdir(importDir);
    await mkdir(work);
    // The µOS the image boots with: the test image, under the daemon's images folder.
    await symlink(path.join(IMAGES, 'default'), path.join(images, 'default'));
    const busybox = execFileSync(
      'unsquashfs',
      ['-cat', path.join(IMAGES, 'default', 'rootfs.squashfs'), 'usr/bin/busybox'],
      { maxBuffer: 64 << 20 },
    );
    const spec: ImageSpec = {
      layers: [
        await makeTar([
          { name: 'bin/' },
          { name: 'bin/busybox', body: busybox, mode: 0o755 },
          ...['sh', 'cat', 'ls', 'pwd', 'id', 'echo'].map((n): Entry => ({
            name: `bin/${n}`,
            type: 'symlink',
            linkname: 'busybox',
          })),
          { name: 'etc/' },
          {
            name: 'etc/passwd',
            body: 'root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n',
          },
          { name: 'srv/', uid: 1000, gid: 1000 },
          { name: 'srv/old.txt', body: 'from layer 1\n' },
        ]),
        await makeTar([
          { name: 'srv/.wh.old.txt', body: '' },
          { name: 'srv/new.txt', body: 'from layer 2\n' },
        ]),
      ],
      env: ['PATH=/bin', 'GREETING=hello from the image'],
      workingDir: '/srv',
      user: 'app',
      entrypoint: ['/bin/sh', '-c'],
    };
    await ociTar(work, path.join(importDir, 'app.tar'), spec);
    await writeFile(path.join(importDir, 'app-docker.tar'), await dockerSaveTar(spec));

    const { c, d } = await qemuDaemon(data, [
      '--images-dir',
      images,
      '--image-import-dir',
      importDir,
    ]);
    const t0 = performance.now();
    const app = ok(await c.call('image.import', { file: 'app.tar', name: 'app' }, LONG));
    const importMs = performance.now() - t0;
    assert.equal(app.kind, 'imported');
    assert.equal(app.base, 'default');
    // The docker save archive through the CLI: its progress on stderr as it goes.
    const cli = await startMvirt(
      ['image', 'import', 'app-docker.tar', '--name', 'app-docker', '--json'],
      { daemon: d },
    ).done;
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stderr, /app-docker: \[1\/5\] read the image/);
    assert.match(cli.stderr, /docker-save: 2 layers/);
    const docker = JSON.parse(cli.stdout) as { rootDigest?: string };
    assert.equal(docker.rootDigest, app.rootDigest, 'docker save and OCI layout give one root');
    const got = ok(await c.call('image.get', { image: 'app' }));
    const container = got.manifest.container as {
      layers: { digest: string }[];
      config: { digest: string };
    };
    assert.equal(container.layers.length, 2);
    assert.match(container.config.digest, /^sha256:[0-9a-f]{64}$/);

    const audit = ok(await c.call('events.query', { objectId: 'image:app', level: 'audit' }));
    assert.ok(
      audit.events.some((e) => /imported from app\.tar/.test(e.message) && e.actor !== undefined),
    );

    // A re-import with nothing new: the cached root disk.
    const t1 = performance.now();
    ok(await c.call('image.import', { file: 'app.tar', name: 'app' }, LONG));
    const reimportMs = performance.now() - t1;
    assert.ok(reimportMs < 10_000, `re-import took ${reimportMs} ms`);

    ok(await c.call('vm.create', { name: 'app-vm', image: 'app', memoryMiB: 256 }));
    const tBoot = performance.now();
    const vm = ok(
      await c.call('vm.start', { vm: 'app-vm', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(vm.pid);
    assert.equal(vm.state, 'ready');
    const bootMs = performance.now() - tBoot;

    const job = ok(
      await c.call(
        'job.run',
        { vm: 'app-vm', argv: ['pwd; echo "$GREETING"; id -u; cat new.txt; ls'], wait: true },
        { timeoutMs: JOB_MS },
      ),
    );
    assert.equal(job.exitCode, 0, job.stderr);
    assert.equal(job.stdout, '/srv\nhello from the image\n1000\nfrom layer 2\nnew.txt\n');

    const own = ok(
      await c.call(
        'job.run',
        {
          vm: 'app-vm',
          argv: ['pwd; echo "$GREETING"; ls /proc/self >/dev/null && echo proc'],
          cwd: '/',
          env: { GREETING: 'mine' },
          wait: true,
        },
        { timeoutMs: JOB_MS },
      ),
    );
    assert.equal(own.stdout, '/\nmine\nproc\n', own.stderr);

    // A tty job: the pty helper is the µOS's, its command runs in the image.
    const tty = ok(
      await c.call(
        'job.run',
        { vm: 'app-vm', argv: ['[ -t 0 ] && echo on-a-tty; cat new.txt'], tty: true, wait: true },
        { timeoutMs: JOB_MS },
      ),
    );
    assert.equal(tty.exitCode, 0, tty.stdout);
    assert.equal(tty.stdout, 'on-a-tty\r\nfrom layer 2\r\n');

    // In use: refused, and it says by whom.
    const del = await c.call('image.delete', { image: 'app' });
    assert.equal(del.ok, false);
    if (!del.ok) {
      assert.equal(del.error.code, 'IMAGE_IN_USE');
      assert.match(del.error.message, new RegExp(vm.id));
    }

    // Hostile archives: refused with the entry named, nothing left behind.
    const before = (await readdir(images)).sort();
    const hostile: [string, Entry[], RegExp][] = [
      ['dotdot.tar', [{ name: '../../evil', body: 'x' }], /"\.\."/],
      ['absolute.tar', [{ name: '/etc/evil', body: 'x' }], /absolute path/],
      [
        'symlink.tar',
        [{ name: 'escape', type: 'symlink', linkname: '../../../etc/shadow' }],
        /outside the image root/,
      ],
      ['hardlink.tar', [{ name: 'h', type: 'link', linkname: '../../etc/shadow' }], /"\.\."/],
      ['device.tar', [{ name: 'sda', type: 'block-device' }], /device node/],
    ];
    for (const [file, entries, words] of hostile) {
      await ociTar(work, path.join(importDir, file), { layers: [await makeTar(entries)] });
      await refusedImport(c, file, 'IMAGE_INVALID', words);
    }
    await writeFile(path.join(importDir, 'damaged.tar'), Buffer.alloc(8192, 0x41));
    await refusedImport(c, 'damaged.tar', 'IMAGE_INVALID', /not a readable tar/);
    const refused = await c.call('image.import', { file: '../app.tar', name: 'x' });
    assert.equal(refused.ok, false);
    assert.deepEqual((await readdir(images)).sort(), before);

    ok(await c.call('vm.kill', { vm: 'app-vm' }, { timeoutMs: 60_000 }));
    ok(await c.call('vm.delete', { vm: 'app-vm' }, { timeoutMs: 60_000 }));
    ok(await c.call('image.delete', { image: 'app-docker' }));
    const left = ok(await c.call('image.list', {}));
    assert.deepEqual(left.images.map((i) => i.name).sort(), ['app', 'default']);
    process.stderr.write(
      `image import: ${Math.round(importMs)} ms, re-import ${Math.round(reimportMs)} ms, boot to ready ${Math.round(bootMs)} ms\n`,
    );
  }),
);
