/**
 * Container image layers applied to a folder (images/oci/apply.ts) and whole
 * imports (images/oci/import.ts) on archives this test makes: whiteouts and
 * opaque folders, every kind of escape refused with the entry named, device
 * nodes and oversized images refused, nothing half-written in the images
 * folder, an OCI layout and a `docker save` archive of one image giving the
 * same root disk, a re-import served from the cache.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { applyLayer, createRootState, type LayerLimits } from '../../../images/oci/apply.js';
import { importImage } from '../../../images/oci/import.js';
import { readManifest } from '../../../images/manifest.js';
import { writeFakeImage } from '../../../harness/daemon.js';
import { dockerSaveTar, makeTar, writeOciLayout, type Entry } from '../../support/oci.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mvirt-oci-'));
});
after(() => rm(dir, { recursive: true, force: true }));

let n = 0;
async function apply(layers: Entry[][], limits?: LayerLimits): Promise<string> {
  const root = path.join(dir, `root-${++n}`);
  await mkdir(root);
  const s = createRootState(root, limits);
  for (const [i, l] of layers.entries())
    await applyLayer(s, String(i + 1), Readable.from(await makeTar(l)));
  return root;
}

async function refused(layers: Entry[][], code: string, words: RegExp): Promise<void> {
  await assert.rejects(apply(layers, { maxBytes: 1 << 20, maxEntries: 100 }), (err: unknown) => {
    assert.ok(err instanceof MvirtError, String(err));
    assert.equal(err.code, code);
    assert.match(err.message, words);
    return true;
  });
}

describe('layers', () => {
  test('whiteouts remove lower files, opaque folders empty what lay below', async () => {
    const root = await apply([
      [
        { name: 'etc/' },
        { name: 'etc/a', body: 'a' },
        { name: 'etc/b', body: 'b' },
        { name: 'opt/' },
        { name: 'opt/x', body: 'x' },
        { name: 'opt/sub/' },
        { name: 'opt/sub/y', body: 'y' },
        { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
      ],
      [
        { name: 'etc/.wh.a', body: '' },
        { name: 'opt/' },
        { name: 'opt/z', body: 'z' },
        { name: 'opt/.wh..wh..opq', body: '' },
        { name: 'usr/bin/tool', body: '#!/bin/sh\n', mode: 0o4755, uid: 1000, gid: 1000 },
        { name: 'etc/b-link', type: 'link', linkname: 'etc/b' },
      ],
    ]);
    assert.equal(existsSync(path.join(root, 'etc/a')), false);
    assert.equal(await readFile(path.join(root, 'etc/b'), 'utf8'), 'b');
    assert.deepEqual((await readdir(path.join(root, 'opt'))).sort(), ['z']);
    assert.equal(await readlink(path.join(root, 'bin')), 'usr/bin');
    const tool = await lstat(path.join(root, 'usr/bin/tool'));
    assert.equal(tool.mode & 0o7777, 0o4755);
    assert.equal(tool.uid, 1000);
    assert.equal(
      (await lstat(path.join(root, 'etc/b-link'))).ino,
      (await lstat(path.join(root, 'etc/b'))).ino,
    );
  });

  test("an opaque marker after the layer's own entries keeps them", async () => {
    const root = await apply([
      [
        { name: 'var/' },
        { name: 'var/lib/' },
        { name: 'var/lib/old', body: 'old' },
        { name: 'var/x', body: 'x' },
      ],
      [
        { name: 'var/lib/new', body: 'new' },
        { name: 'var/.wh..wh..opq', body: '' },
      ],
    ]);
    assert.deepEqual(await readdir(path.join(root, 'var')), ['lib']);
    assert.deepEqual(await readdir(path.join(root, 'var/lib')), ['new']);
  });

  test('a file written where a link was replaces the link, never writes through it', async () => {
    const victim = path.join(dir, 'victim');
    await writeFile(victim, 'host file');
    const root = await apply([
      [{ name: 'f', type: 'symlink', linkname: victim }],
      [{ name: 'f', body: 'image file' }],
    ]);
    assert.equal(await readFile(victim, 'utf8'), 'host file');
    assert.equal((await lstat(path.join(root, 'f'))).isFile(), true);
  });

  test('an absolute link followed by a later entry resolves inside the root', async () => {
    const root = await apply([
      [{ name: 'etc/' }, { name: 'up', type: 'symlink', linkname: '/' }],
      [{ name: 'up/etc/x', body: 'inside' }],
    ]);
    assert.equal(await readFile(path.join(root, 'etc/x'), 'utf8'), 'inside');
  });

  test('every escape is refused, naming the entry', async () => {
    await refused([[{ name: '../evil', body: 'x' }]], 'IMAGE_INVALID', /"\.\.\/evil".*"\.\."/);
    await refused([[{ name: 'a/../../evil', body: 'x' }]], 'IMAGE_INVALID', /"\.\."/);
    await refused([[{ name: '/etc/evil', body: 'x' }]], 'IMAGE_INVALID', /absolute path/);
    await refused(
      [[{ name: 'a/' }, { name: 'a/l', type: 'symlink', linkname: '../../etc' }]],
      'IMAGE_INVALID',
      /"a\/l".*outside the image root/,
    );
    await refused(
      [[{ name: 'h', type: 'link', linkname: '../../etc/passwd' }]],
      'IMAGE_INVALID',
      /"h"|"\.\.\/\.\.\/etc\/passwd"/,
    );
    await refused(
      [[{ name: 'h', type: 'link', linkname: '/etc/passwd' }]],
      'IMAGE_INVALID',
      /absolute path/,
    );
    await refused(
      [[{ name: 'h', type: 'link', linkname: 'missing' }]],
      'IMAGE_INVALID',
      /hard link to "missing"/,
    );
  });

  test('device nodes and oversized images are refused', async () => {
    await refused(
      [[{ name: 'dev/' }, { name: 'dev/sda', type: 'block-device' }]],
      'IMAGE_INVALID',
      /"dev\/sda" is a device node/,
    );
    await refused([[{ name: 'null', type: 'character-device' }]], 'IMAGE_INVALID', /device node/);
    await refused(
      [[{ name: 'big', body: Buffer.alloc(2 << 20) }]],
      'IMAGE_TOO_LARGE',
      /"big".*--max-bytes/,
    );
    await refused(
      [Array.from({ length: 101 }, (_, i) => ({ name: `f${i}`, body: '' }))],
      'IMAGE_TOO_LARGE',
      /more than 100 entries/,
    );
  });
});

describe('import', () => {
  const data = (): string => path.join(dir, 'data');
  const cache = (): string => path.join(dir, 'cache');
  const quiet = (): void => undefined;
  before(async () => {
    // A stand-in µOS base image: the importer only links its files.
    await writeFakeImage(path.join(data(), 'images'));
  });

  const spec = async (): Promise<Parameters<typeof writeOciLayout>[1]> => ({
    layers: [
      await makeTar([
        { name: 'etc/' },
        {
          name: 'etc/passwd',
          body: 'root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n',
        },
        { name: 'srv/' },
        { name: 'srv/old.txt', body: 'old' },
      ]),
      await makeTar([
        { name: 'srv/.wh.old.txt', body: '' },
        { name: 'srv/new.txt', body: 'new' },
      ]),
    ],
    env: ['PATH=/usr/bin:/bin', 'GREETING=hello'],
    workingDir: '/srv',
    user: 'app',
    entrypoint: ['/bin/sh', '-c'],
  });

  test('an OCI layout and a docker save archive of one image give the same root disk', async () => {
    const s = await spec();
    const oci = path.join(dir, 'oci');
    await writeOciLayout(oci, s);
    const a = await importImage({
      source: oci,
      name: 'app',
      dataDir: data(),
      cacheDir: cache(),
      log: quiet,
    });
    assert.equal(a.fromCache, false);
    const m = await readManifest(a.dir);
    assert.equal(m.container?.source.format, 'oci-layout');
    assert.equal(m.container?.layers.length, 2);
    assert.equal(m.container?.config.workingDir, '/srv');
    assert.match(m.cmdline, /mvirt\.image=1/);

    const tar = path.join(dir, 'app-docker.tar');
    await writeFile(tar, await dockerSaveTar(s));
    const b = await importImage({
      source: tar,
      name: 'app-docker',
      dataDir: data(),
      cacheDir: cache(),
      log: quiet,
    });
    assert.equal(b.manifest.container?.source.format, 'docker-save');
    assert.equal(b.manifest.container?.rootDigest, a.manifest.container?.rootDigest);

    const t0 = performance.now();
    const again = await importImage({
      source: oci,
      name: 'app',
      dataDir: data(),
      cacheDir: cache(),
      log: quiet,
    });
    assert.equal(again.fromCache, true);
    assert.ok(performance.now() - t0 < 10_000);
    assert.deepEqual((await readdir(path.join(data(), 'images'))).sort(), [
      'app',
      'app-docker',
      'default',
    ]);
  });

  test('a hostile or damaged archive, or a registry reference, is refused and leaves nothing behind', async () => {
    const hostile = path.join(dir, 'hostile');
    await writeOciLayout(hostile, {
      layers: [await makeTar([{ name: 'x', type: 'symlink', linkname: '../../../../etc/shadow' }])],
    });
    await assert.rejects(
      importImage({
        source: hostile,
        name: 'hostile',
        dataDir: data(),
        cacheDir: cache(),
        log: quiet,
      }),
      /outside the image root/,
    );
    const corrupt = path.join(dir, 'corrupt.tar');
    await writeFile(corrupt, Buffer.alloc(4096, 7));
    await assert.rejects(
      importImage({
        source: corrupt,
        name: 'corrupt',
        dataDir: data(),
        cacheDir: cache(),
        log: quiet,
      }),
      (err: unknown) => err instanceof MvirtError && err.code === 'IMAGE_INVALID',
    );
    await assert.rejects(
      importImage({
        source: hostile,
        name: 'default',
        dataDir: data(),
        cacheDir: cache(),
        log: quiet,
      }),
      /cannot take the name of its base image/,
    );
    // A registry reference (no such path here): how to make a local archive of it.
    for (const ref of ['python:3.12-slim', 'docker://python', 'ghcr.io/org/app']) {
      const bare = ref.replace('docker://', '');
      await assert.rejects(
        importImage({
          source: ref,
          name: 'pulled',
          dataDir: data(),
          cacheDir: cache(),
          log: quiet,
        }),
        (err: unknown) => {
          assert.ok(err instanceof MvirtError && err.code === 'IMAGE_INVALID', String(err));
          assert.ok(
            err.message.startsWith(`${ref} is a registry reference`) &&
              err.message.includes(`\`docker save -o app.tar ${bare}\``) &&
              err.message.includes(`\`skopeo copy docker://${bare} oci-archive:app.tar\``),
            err.message,
          );
          return true;
        },
      );
    }
    await assert.rejects(
      importImage({
        source: path.join(dir, 'nothing'),
        name: 'x',
        dataDir: data(),
        cacheDir: cache(),
        log: quiet,
      }),
      /nothing does not exist: give an OCI image layout or a `docker save` archive/,
    );
    const names = await readdir(path.join(data(), 'images'));
    assert.deepEqual(
      names.filter((x) => !['app', 'app-docker', 'default'].includes(x)),
      [],
    );
    assert.deepEqual(await readdir(path.join(cache(), 'oci', 'work')), []);
  });
});
