/**
 * A VM snapshot's folder on a real file system: ids that are not mvirtd's
 * never become paths, the manifest is written whole (temporary file and
 * rename) and read back only when it and the state file beside it are what
 * it says, never through a link planted in their place.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync } from 'node:fs';
import { mkdir, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  createSnapshotFiles,
  MANIFEST_FILE,
  newSnapshotId,
  savedOf,
  sha256File,
  STATE_FILE,
  type SnapshotFiles,
  type SnapshotManifest,
} from '../../../host/snapshots/files.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { refused } from '../../support/volumes.js';

const STATE_BYTES = 4096;
let dir: string;
let files: SnapshotFiles;
before(async () => {
  dir = await makeTempDir('mvirt-snapfiles-');
  files = createSnapshotFiles(path.join(dir, 'snapshots'));
});
after(() => removeDir(dir));

const hex = (c: string) => c.repeat(64);
function manifest(id: string, over: Partial<SnapshotManifest> = {}): SnapshotManifest {
  return {
    format: 1,
    id,
    name: 'warm',
    createdAt: '2026-01-01T00:00:00.000Z',
    createdBy: 'user:alice',
    source: { vm: 'vm-0123456789ab', name: 'src', generation: 2 },
    image: { name: 'default', key: 'k1' },
    network: { mode: 'none' },
    state: {
      backend: 'qemu',
      version: '9.2.0',
      machine: 'pc-i440fx-9.2',
      memoryMiB: 256,
      vcpus: 1,
      devices: hex('d'),
      bytes: STATE_BYTES,
    },
    files: { [STATE_FILE]: { bytes: STATE_BYTES, sha256: hex('a') } },
    ...over,
  };
}

/** A complete snapshot folder: state file of STATE_BYTES and its manifest. */
async function complete(over: Partial<SnapshotManifest> = {}): Promise<string> {
  const id = newSnapshotId();
  await files.prepare(id);
  await writeFile(files.stateFile(id), Buffer.alloc(STATE_BYTES, 7));
  await files.writeManifest(manifest(id, over));
  return id;
}
const manifestOf = (id: string) => path.join(files.dirOf(id), MANIFEST_FILE);

describe('ids and paths', () => {
  test('new ids are snap-<12 hex>, and differ', () => {
    const ids = new Set(Array.from({ length: 50 }, newSnapshotId));
    assert.equal(ids.size, 50);
    for (const id of ids) assert.match(id, /^snap-[0-9a-f]{12}$/);
  });

  test('dirOf and stateFile: only an id mvirtd makes becomes a path, under the root', () => {
    const id = newSnapshotId();
    assert.equal(files.dirOf(id), path.join(files.root, id));
    assert.equal(files.stateFile(id), path.join(files.root, id, STATE_FILE));
    for (const bad of [
      '',
      'warm',
      '..',
      '../etc',
      `${id}/..`,
      `../${id}`,
      `/tmp/${id}`,
      'snap-0123456789AB',
      'snap-0123456789a',
      'snap-0123456789abc',
      `${id}\n`,
      'vol-0123456789ab',
    ]) {
      assert.throws(() => files.dirOf(bad), { code: 'INVALID_PARAMS' }, JSON.stringify(bad));
      assert.throws(() => files.stateFile(bad), { code: 'INVALID_PARAMS' }, JSON.stringify(bad));
    }
  });

  test('prepare makes the folder 0700, once', async () => {
    const id = newSnapshotId();
    assert.equal(await files.prepare(id), files.dirOf(id));
    assert.equal(lstatSync(files.dirOf(id)).mode & 0o777, 0o700);
    await assert.rejects(files.prepare(id), { code: 'EEXIST' }, 'a folder is never reused');
  });
});

describe('the manifest', () => {
  test('written through a temporary file (0600, none left) and read back as written', async () => {
    const id = await complete();
    assert.deepEqual(readdirSync(files.dirOf(id)).sort(), [MANIFEST_FILE, STATE_FILE]);
    assert.equal(lstatSync(manifestOf(id)).mode & 0o777, 0o600);
    assert.deepEqual(await files.readManifest(id), manifest(id));
    assert.deepEqual(JSON.parse(await readFile(manifestOf(id), 'utf8')), manifest(id));
  });

  test('an invalid manifest is not written, and leaves no temporary file', async () => {
    const id = newSnapshotId();
    await files.prepare(id);
    const bad = { ...manifest(id), extra: true } as SnapshotManifest;
    await assert.rejects(files.writeManifest(bad));
    assert.deepEqual(readdirSync(files.dirOf(id)), [], 'nothing left behind');
    // The same folder still takes its manifest afterwards.
    await writeFile(files.stateFile(id), Buffer.alloc(STATE_BYTES));
    await files.writeManifest(manifest(id));
    assert.equal((await files.readManifest(id)).id, id);
  });

  test('writeManifest refuses a manifest naming an id that is not a snapshot id', async () => {
    await assert.rejects(files.writeManifest(manifest('../escape')), { code: 'INVALID_PARAMS' });
    assert.deepEqual(
      readdirSync(dir).filter((f) => f !== 'snapshots'),
      [],
      'nothing written outside the root',
    );
  });

  test('readManifest of a folder that is missing or is not a folder', async () => {
    const missing = newSnapshotId();
    const e = await refused(files.readManifest(missing), 'SNAPSHOT_INVALID');
    assert.match(e.message, new RegExp(`^snapshot ${missing}: its folder is missing$`));
    const plain = newSnapshotId();
    await writeFile(files.dirOf(plain), 'a file');
    const f = await refused(files.readManifest(plain), 'SNAPSHOT_INVALID');
    assert.match(f.message, /its folder is not a directory/);
    // A link to a complete snapshot is refused too: the folder must be ours.
    const real = await complete();
    const link = newSnapshotId();
    await symlink(files.dirOf(real), files.dirOf(link));
    const l = await refused(files.readManifest(link), 'SNAPSHOT_INVALID');
    assert.match(l.message, /its folder is not a directory/);
  });

  test('readManifest without a manifest (a crash before it was written)', async () => {
    const id = newSnapshotId();
    await files.prepare(id);
    await writeFile(files.stateFile(id), Buffer.alloc(STATE_BYTES));
    const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /manifest\.json is missing/);
  });

  test('a symlink or a folder in the manifest’s place is refused, even to a valid one', async () => {
    const real = await complete();
    const id = newSnapshotId();
    await files.prepare(id);
    await writeFile(files.stateFile(id), Buffer.alloc(STATE_BYTES));
    // A valid manifest for this very id, outside its folder, linked in.
    const planted = path.join(dir, 'planted.json');
    await writeFile(planted, JSON.stringify(manifest(id)));
    await symlink(planted, manifestOf(id));
    const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /manifest\.json is not a regular file/);
    const other = newSnapshotId();
    await files.prepare(other);
    await mkdir(manifestOf(other));
    await refused(files.readManifest(other), 'SNAPSHOT_INVALID');
    assert.equal((await files.readManifest(real)).id, real, 'the real one still reads');
  });

  test('a manifest that is not JSON, not a manifest, or names another snapshot', async () => {
    const id = await complete();
    await writeFile(manifestOf(id), '{"format": 1, ');
    assert.match(
      (await refused(files.readManifest(id), 'SNAPSHOT_INVALID')).message,
      /manifest\.json is not JSON/,
    );
    const cases: [unknown, RegExp][] = [
      [{ ...manifest(id), format: 2 }, /not a valid manifest: format/],
      [{ ...manifest(id), extra: 1 }, /not a valid manifest/],
      [{ ...manifest(id), files: {} }, /not a valid manifest: files/],
      [{ ...manifest(id), image: { name: 'default' } }, /not a valid manifest: image\.key/],
      [{ ...manifest(id), id: '../x' }, /not a valid manifest: id/],
      [[], /not a valid manifest/],
    ];
    for (const [m, why] of cases) {
      await writeFile(manifestOf(id), JSON.stringify(m));
      const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.match(e.message, why);
    }
    const other = newSnapshotId();
    await writeFile(manifestOf(id), JSON.stringify(manifest(other)));
    const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.equal(e.message, `snapshot ${id}: manifest.json names snapshot ${other}`);
  });

  test('the state file: missing, a link, or of another size than the manifest says', async () => {
    const id = await complete();
    await truncate(files.stateFile(id), STATE_BYTES - 1);
    let e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.equal(
      e.message,
      `snapshot ${id}: state.bin has ${STATE_BYTES - 1} bytes, the manifest says ${STATE_BYTES}`,
    );
    await truncate(files.stateFile(id), STATE_BYTES + 1);
    await refused(files.readManifest(id), 'SNAPSHOT_INVALID');

    const gone = await complete();
    await files.remove(gone);
    await files.prepare(gone);
    await files.writeManifest(manifest(gone));
    e = await refused(files.readManifest(gone), 'SNAPSHOT_INVALID');
    assert.match(e.message, /state\.bin is missing/);

    const linked = newSnapshotId();
    await files.prepare(linked);
    const outside = path.join(dir, 'outside.bin');
    await writeFile(outside, Buffer.alloc(STATE_BYTES));
    await symlink(outside, files.stateFile(linked));
    await files.writeManifest(manifest(linked));
    e = await refused(files.readManifest(linked), 'SNAPSHOT_INVALID');
    assert.match(e.message, /state\.bin is not a regular file/);
  });

  test('the two sizes in the manifest must agree', async () => {
    const id = await complete({
      files: { [STATE_FILE]: { bytes: STATE_BYTES, sha256: hex('a') } },
      state: { ...manifest('snap-000000000000').state, bytes: STATE_BYTES * 2 },
    });
    await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
  });

  test('remove takes the whole folder; removing one that is gone is fine', async () => {
    const id = await complete();
    await files.remove(id);
    assert.ok(!readdirSync(files.root).includes(id));
    await files.remove(id);
    await assert.rejects(files.remove('../x'), { code: 'INVALID_PARAMS' });
  });

  test('savedOf: the state the hypervisor interface takes, a copy', () => {
    const m = manifest(newSnapshotId());
    const s = savedOf(m);
    assert.deepEqual(s, m.state);
    s.bytes = 1;
    assert.equal(m.state.bytes, STATE_BYTES);
  });
});

test('sha256File streams a file to its sha256', async () => {
  const f = path.join(dir, 'blob');
  const data = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  await writeFile(f, data);
  assert.equal(await sha256File(f), createHash('sha256').update(data).digest('hex'));
  await writeFile(f, '');
  assert.equal(
    await sha256File(f),
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  );
  await assert.rejects(sha256File(path.join(dir, 'nope')), { code: 'ENOENT' });
});
