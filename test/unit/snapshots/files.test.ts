/**
 * A VM snapshot's folder on a real file system: ids that are not mvirtd's
 * never become paths, the manifest is written whole (temporary file and
 * rename) and read back only when it lists exactly the state's files and
 * each of them (state.bin, ram.bin) is what it says, never through a link
 * planted in their place. Hashing the files: hashes.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  createSnapshotFiles,
  MANIFEST_FILE,
  newSnapshotId,
  savedOf,
  type SnapshotFiles,
  type SnapshotManifest,
} from '../../../host/snapshots/files.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { refused } from '../../support/volumes.js';

const STATE_BYTES = 4096;
const RAM_BYTES = 3 * 4096;
/** What each file of a complete snapshot holds (its size from the manifest). */
const content = {
  'state.bin': Buffer.alloc(STATE_BYTES, 7),
  'ram.bin': Buffer.alloc(RAM_BYTES, 9),
};
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
/** A file's entry in the manifest's files. */
const entry = (name: keyof typeof content) => ({
  bytes: content[name].length,
  sha256: sha(content[name]),
});
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
      ram: 'file',
      files: { 'state.bin': STATE_BYTES, 'ram.bin': RAM_BYTES },
      bytes: STATE_BYTES + RAM_BYTES,
    },
    files: { 'state.bin': entry('state.bin'), 'ram.bin': entry('ram.bin') },
    disks: [],
    ...over,
  };
}

/** The state's files of a complete snapshot, written into `id`'s folder. */
async function stateFiles(id: string): Promise<void> {
  for (const [name, data] of Object.entries(content))
    await writeFile(path.join(files.dirOf(id), name), data);
}
/** A complete snapshot folder: state.bin, ram.bin and their manifest. */
async function complete(over: Partial<SnapshotManifest> = {}): Promise<string> {
  const id = newSnapshotId();
  await files.prepare(id);
  await stateFiles(id);
  await files.writeManifest(manifest(id, over));
  return id;
}
const manifestOf = (id: string) => path.join(files.dirOf(id), MANIFEST_FILE);
const fileOf = (id: string, name: string) => path.join(files.dirOf(id), name);

describe('ids and paths', () => {
  test('new ids are snap-<12 hex>, and differ', () => {
    const ids = new Set(Array.from({ length: 50 }, newSnapshotId));
    assert.equal(ids.size, 50);
    for (const id of ids) assert.match(id, /^snap-[0-9a-f]{12}$/);
  });

  test('dirOf: only an id mvirtd makes becomes a path, under the root', () => {
    const id = newSnapshotId();
    assert.equal(files.dirOf(id), path.join(files.root, id));
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
    assert.deepEqual(readdirSync(files.dirOf(id)).sort(), [MANIFEST_FILE, 'ram.bin', 'state.bin']);
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
    await stateFiles(id);
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
    await stateFiles(id);
    const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /manifest\.json is missing/);
  });

  test('a symlink or a folder in the manifest’s place is refused, even to a valid one', async () => {
    const real = await complete();
    const id = newSnapshotId();
    await files.prepare(id);
    await stateFiles(id);
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
      [{ ...manifest(id), files: [] }, /not a valid manifest: files/],
      [{ ...manifest(id), image: { name: 'default' } }, /not a valid manifest: image\.key/],
      [{ ...manifest(id), id: '../x' }, /not a valid manifest: id/],
      [{ ...manifest(id), state: { ...manifest(id).state, ram: 'disk' } }, /: state\.ram/],
      [{ ...manifest(id), state: { ...manifest(id).state, files: undefined } }, /: state\.files/],
      [
        { ...manifest(id), files: { 'state.bin': { bytes: 1, sha256: 'x' } } },
        /: files\.state\.bin\.sha256/,
      ],
      [[], /not a valid manifest/],
    ];
    // A file name is a plain name the backend gives (a-z, 0-9, -, then .bin), never a path.
    for (const name of [
      '../ram.bin',
      'sub/ram.bin',
      '/ram.bin',
      'manifest.json',
      'Ram.bin',
      '.bin',
      'ram',
    ]) {
      const m = manifest(id);
      cases.push(
        [
          { ...m, files: { ...m.files, [name]: { bytes: 1, sha256: hex('a') } } },
          /: files\..*Invalid key/,
        ],
        [
          { ...m, state: { ...m.state, files: { ...m.state.files, [name]: 1 } } },
          /: state\.files\..*Invalid key/,
        ],
      );
    }
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

  test('a manifest listing other files than its state has', async () => {
    const id = await complete();
    const m = manifest(id);
    const stateOnly = { 'state.bin': entry('state.bin') };
    const cases: SnapshotManifest[] = [
      // ram.bin on disk and in the state, not in the manifest's files.
      { ...m, files: stateOnly },
      { ...m, files: {} },
      // A file the state does not have.
      { ...m, files: { ...m.files, 'extra.bin': { bytes: 0, sha256: hex('0') } } },
      // As many files, another name.
      { ...m, files: { ...stateOnly, 'mem.bin': entry('ram.bin') } },
      // The state listing fewer files than the manifest.
      { ...m, state: { ...m.state, files: { 'state.bin': STATE_BYTES } } },
      { ...m, state: { ...m.state, files: {} } },
    ];
    for (const c of cases) {
      await writeFile(manifestOf(id), JSON.stringify(c));
      const e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.equal(
        e.message,
        `snapshot ${id}: manifest.json lists other files than its state has`,
        JSON.stringify(Object.keys(c.files)),
      );
    }
    // The same names in another order are the same files.
    const reordered = {
      ...m,
      files: { 'ram.bin': entry('ram.bin'), 'state.bin': entry('state.bin') },
    };
    await writeFile(manifestOf(id), JSON.stringify(reordered));
    assert.deepEqual(await files.readManifest(id), reordered);
  });

  for (const name of ['state.bin', 'ram.bin'] as const) {
    const bytes = content[name].length;
    test(`${name}: of another size than the manifest says, missing, a link or a folder`, async () => {
      const id = await complete();
      await truncate(fileOf(id, name), bytes - 1);
      let e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.equal(
        e.message,
        `snapshot ${id}: ${name} has ${bytes - 1} bytes, the manifest says ${bytes}`,
      );
      await truncate(fileOf(id, name), bytes + 1);
      e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.match(e.message, new RegExp(`${name} has ${bytes + 1} bytes`));
      await truncate(fileOf(id, name), 0);
      await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      await truncate(fileOf(id, name), bytes);
      assert.equal((await files.readManifest(id)).id, id, 'its own size again: read');

      await rm(fileOf(id, name));
      e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.equal(e.message, `snapshot ${id}: ${name} is missing`);

      // A link to a file of the right size, outside the folder.
      const outside = path.join(dir, `outside-${id}-${name}`);
      await writeFile(outside, content[name]);
      await symlink(outside, fileOf(id, name));
      e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.equal(e.message, `snapshot ${id}: ${name} is not a regular file`);
      await rm(fileOf(id, name));
      await mkdir(fileOf(id, name));
      e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
      assert.equal(e.message, `snapshot ${id}: ${name} is not a regular file`);
    });
  }

  test("each file's two sizes in the manifest must agree, and agree with the file", async () => {
    const m = manifest('snap-000000000000');
    // The state says ram.bin is twice what the manifest's files and the disk say.
    let id = await complete({
      state: { ...m.state, files: { ...m.state.files, 'ram.bin': RAM_BYTES * 2 } },
    });
    let e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.equal(
      e.message,
      `snapshot ${id}: manifest.json gives ram.bin two sizes (${RAM_BYTES} and ${RAM_BYTES * 2})`,
    );
    // The manifest's files say so, the state and the disk not.
    id = await complete({
      files: { ...m.files, 'ram.bin': { ...entry('ram.bin'), bytes: RAM_BYTES * 2 } },
    });
    e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.equal(
      e.message,
      `snapshot ${id}: manifest.json gives ram.bin two sizes (${RAM_BYTES * 2} and ${RAM_BYTES})`,
    );
    // The files agree, the total does not.
    id = await complete({ state: { ...m.state, bytes: m.state.bytes + 1 } });
    e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /its files hold \d+ bytes, the manifest says \d+/);
    // Both say so: the disk does not.
    id = await complete({
      state: { ...m.state, files: { ...m.state.files, 'state.bin': 1 } },
      files: { ...m.files, 'state.bin': { ...entry('state.bin'), bytes: 1 } },
    });
    e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.equal(
      e.message,
      `snapshot ${id}: state.bin has ${STATE_BYTES} bytes, the manifest says 1`,
    );
  });

  test('a state saved through the stream: state.bin alone', async () => {
    const m = manifest('snap-000000000000');
    const id = await complete({
      state: { ...m.state, ram: 'stream', files: { 'state.bin': STATE_BYTES }, bytes: STATE_BYTES },
      files: { 'state.bin': entry('state.bin') },
    });
    // The ram.bin complete() wrote is not part of it: not listed, not read.
    await rm(fileOf(id, 'ram.bin'));
    const read = await files.readManifest(id);
    assert.equal(read.state.ram, 'stream');
    assert.deepEqual(Object.keys(read.files), ['state.bin']);
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
    assert.equal(m.state.bytes, STATE_BYTES + RAM_BYTES);
  });
});
