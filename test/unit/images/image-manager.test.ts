/**
 * image.* behind the API (host/images/manager.ts) on a real SQLite store and
 * a real images folder: list and get, delete refused while a VM or a pool
 * uses the image (named in the error) and audited when done, a recipe
 * naming host files refused, an import only from the import folder (no
 * links, no paths), a dry run that changes nothing.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { writeFakeImage } from '../../../harness/daemon.js';
import { createImageManager, type ImageManager } from '../../../host/images/manager.js';
import type { AppendEvent } from '../../../host/events/log.js';
import { silentLogger } from '../../../host/log.js';
import { createStore, type Store } from '../../../host/store/index.js';
import { MvirtError } from '../../../protocol/errors.js';
import { PARAMS } from '../../../protocol/rpc.js';
import { parseWith } from '../../../protocol/validate.js';

let dir = '';
let store: Store;
let images: ImageManager;
const events: AppendEvent[] = [];

const refused = (code: string, words: RegExp) => (err: unknown) => {
  assert.ok(err instanceof MvirtError, String(err));
  assert.equal(err.code, code);
  assert.match(err.message, words);
  return true;
};

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mvirt-image-manager-'));
  const imagesDir = path.join(dir, 'images');
  await writeFakeImage(imagesDir, 'default');
  await writeFakeImage(imagesDir, 'spare');
  await mkdir(path.join(dir, 'import'));
  store = createStore(path.join(dir, 'mvirt.db'), silentLogger());
  images = createImageManager({
    options: { imagesDir, imageImportDir: path.join(dir, 'import'), dataDir: dir },
    store,
    events: { append: (e) => events.push(e) },
    log: silentLogger(),
  });
});
after(async () => {
  store.close();
  await rm(dir, { recursive: true, force: true });
});

test('list and get read the images folder', async () => {
  const list = await images.list();
  assert.deepEqual(
    list.map((i) => [i.name, i.kind]),
    [
      ['default', 'built'],
      ['spare', 'built'],
    ],
  );
  const got = await images.get('spare');
  assert.equal(got.image.name, 'spare');
  assert.equal(got.manifest.name, 'spare');
  await assert.rejects(images.get('nope'), refused('IMAGE_NOT_FOUND', /nope/));
});

test('delete: refused while a pool uses it, done and audited when nothing does', async () => {
  store.pools.put(
    { name: 'p1', image: 'spare', min: 0, max: 1, vcpus: 1, memoryMiB: 128 },
    new Date().toISOString(),
  );
  await assert.rejects(images.delete('spare'), refused('IMAGE_IN_USE', /pool p1/));
  await assert.rejects(images.plan.delete('spare'), refused('IMAGE_IN_USE', /pool p1/));
  store.pools.delete('p1');
  const plan = await images.plan.delete('spare');
  assert.deepEqual(plan.files.remove, ['images/spare/']);
  assert.ok(existsSync(path.join(dir, 'images', 'spare')), 'a dry run removes nothing');
  await images.delete('spare');
  assert.equal(existsSync(path.join(dir, 'images', 'spare')), false);
  assert.ok(events.some((e) => e.level === 'audit' && e.message === 'spare: deleted'));
});

test('a recipe sent over the API may name no host file', async () => {
  await assert.rejects(
    images.build(
      {
        name: 'sneaky',
        kernel: { custom: 'kernel-config' },
        files: [{ src: '/etc/shadow', dest: '/shadow' }],
      },
      false,
    ),
    refused('RECIPE_INVALID', /may not copy host files/),
  );
  await assert.rejects(
    images.build({ name: 'sneaky', kernel: { custom: '/tmp' } }, false),
    refused('RECIPE_INVALID', /kernel\.custom/),
  );
});

test('an import reads only a regular file of the import folder', async () => {
  await writeFile(path.join(dir, 'outside.tar'), 'x');
  await symlink(path.join(dir, 'outside.tar'), path.join(dir, 'import', 'link.tar'));
  await assert.rejects(
    images.import({ file: 'link.tar', name: 'x' }),
    refused('IMPORT_REFUSED', /links are not followed/),
  );
  await assert.rejects(
    images.import({ file: 'missing.tar', name: 'x' }),
    refused('IMPORT_REFUSED', /not a regular file/),
  );
  // A registry reference is no file name: the params say how to make an archive of it.
  for (const file of ['python:3.12-slim', 'docker://alpine', 'ghcr.io/org/app']) {
    const bare = file.replace('docker://', '');
    assert.throws(
      () => parseWith(PARAMS['image.import'], { file, name: 'app' }),
      (err: unknown) =>
        err instanceof MvirtError &&
        err.code === 'INVALID_PARAMS' &&
        err.message.includes(`${file} is a registry reference`) &&
        err.message.includes(`\`docker save -o app.tar ${bare}\``) &&
        err.message.includes(`\`skopeo copy docker://${bare} oci-archive:app.tar\``),
    );
  }
  for (const file of ['app.tar', 'python', 'my-app_1.2.tar.gz'])
    assert.equal(parseWith(PARAMS['image.import'], { file, name: 'app' }).file, file);
});
