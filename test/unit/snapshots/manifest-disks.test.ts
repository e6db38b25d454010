/**
 * The disks of a snapshot's manifest on a real file system: read back as
 * written, and refused (SNAPSHOT_INVALID, or not written at all) when they
 * are out of order, name a file other than their position's, point out of
 * the folder, or their copy is missing, of another size or a link; a
 * manifest from before volumes could be saved reads with no disks; the
 * public record's view of them.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  createSnapshotFiles,
  MANIFEST_FILE,
  newSnapshotId,
  publicDisks,
  type ManifestDisk,
  type ManifestInput,
  type SnapshotFiles,
} from '../../../host/snapshots/files.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { refused } from '../../support/volumes.js';

const STATE = Buffer.alloc(4096, 7);
const COPY = Buffer.alloc(8192, 3);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const vol = (n: number) => ({ id: `vol-00000000000${n}`, name: `v${n}` });

/** A raw copy at 0, a qcow2 overlay's copy at 1 (with its template), a shared disk at 2. */
const DISKS: ManifestDisk[] = [
  {
    position: 0,
    volume: vol(1),
    format: 'raw',
    readOnly: false,
    sizeBytes: 1 << 20,
    kept: 'copy',
    file: 'disk-0.raw',
    bytes: COPY.length,
    sha256: sha(COPY),
  },
  {
    position: 1,
    volume: vol(2),
    format: 'qcow2',
    readOnly: false,
    sizeBytes: 2 << 20,
    kept: 'copy',
    file: 'disk-1.qcow2',
    bytes: COPY.length,
    sha256: sha(COPY),
    template: { ...vol(3), format: 'raw' },
  },
  {
    position: 2,
    volume: vol(4),
    format: 'raw',
    readOnly: true,
    sizeBytes: 1 << 20,
    kept: 'shared',
  },
];

let dir: string;
let files: SnapshotFiles;
before(async () => {
  dir = await makeTempDir('mvirt-snapdisks-');
  files = createSnapshotFiles(path.join(dir, 'snapshots'));
});
after(() => removeDir(dir));

function manifest(id: string, disks?: unknown[]): ManifestInput {
  return {
    format: 1,
    id,
    name: 'with-disks',
    createdAt: '2026-01-01T00:00:00.000Z',
    createdBy: null,
    source: { vm: 'vm-0123456789ab', name: 'src', generation: 0 },
    image: { name: 'default', key: 'k1' },
    network: { mode: 'none' },
    state: {
      backend: 'qemu',
      version: '7.2.0',
      machine: 'pc-i440fx-7.2',
      memoryMiB: 256,
      vcpus: 1,
      devices: 'd'.repeat(64),
      ram: 'stream',
      files: { 'state.bin': STATE.length },
      bytes: STATE.length,
    },
    files: { 'state.bin': { bytes: STATE.length, sha256: sha(STATE) } },
    ...(disks ? { disks: disks as ManifestDisk[] } : {}),
  };
}

/** A snapshot folder with its state, the two copies and a manifest listing `disks`. */
async function folder(disks?: unknown[]): Promise<string> {
  const id = newSnapshotId();
  await files.prepare(id);
  await writeFile(path.join(files.dirOf(id), 'state.bin'), STATE);
  for (const f of ['disk-0.raw', 'disk-1.qcow2'])
    await writeFile(path.join(files.dirOf(id), f), COPY);
  await files.writeManifest(manifest(id, disks));
  return id;
}

/** A manifest written around writeManifest's checks (a hand edit on disk). */
async function edited(disks: unknown[]): Promise<string> {
  const id = await folder();
  await writeFile(
    path.join(files.dirOf(id), MANIFEST_FILE),
    JSON.stringify({ ...manifest(id), disks }),
  );
  return id;
}

describe("a manifest's disks", () => {
  test('read back as written; a manifest without them has none', async () => {
    const id = await folder(DISKS);
    assert.deepEqual((await files.readManifest(id)).disks, DISKS);
    assert.deepEqual((await files.readManifest(await folder())).disks, []);
  });

  test('the public record: id, name, format, readOnly, size, kept, the template id', () => {
    assert.deepEqual(publicDisks(DISKS), [
      {
        volume: vol(1).id,
        name: 'v1',
        format: 'raw',
        readOnly: false,
        sizeBytes: 1 << 20,
        kept: 'copy',
      },
      {
        volume: vol(2).id,
        name: 'v2',
        format: 'qcow2',
        readOnly: false,
        sizeBytes: 2 << 20,
        kept: 'copy',
        template: vol(3).id,
      },
      {
        volume: vol(4).id,
        name: 'v4',
        format: 'raw',
        readOnly: true,
        sizeBytes: 1 << 20,
        kept: 'shared',
      },
    ]);
  });

  test('refused by their schema, before anything is written', async () => {
    const [a, b, c] = DISKS;
    for (const bad of [
      [{ ...a, file: '../../volumes/vol-000000000001.raw' }],
      [{ ...a, file: 'disk-0.bin' }],
      [{ ...a, sha256: 'x' }],
      [{ ...c, readOnly: false }], // a shared disk is read-only
      [{ ...a, kept: 'moved' }],
      [{ ...b, volume: { id: '../etc', name: 'x' } }],
      [{ ...a, extra: 1 }],
    ]) {
      const id = newSnapshotId();
      await files.prepare(id);
      await assert.rejects(
        files.writeManifest(manifest(id, bad)),
        { name: 'ZodError' },
        JSON.stringify(bad),
      );
      const e = await refused(files.readManifest(await edited(bad)), 'SNAPSHOT_INVALID');
      assert.match(e.message, /not a valid manifest/);
    }
  });

  test('refused when out of order or naming another position’s file', async () => {
    const [a, b, c] = DISKS;
    let e = await refused(files.readManifest(await folder([b, a, c])), 'SNAPSHOT_INVALID');
    assert.match(e.message, /lists disk 1 in place 0/);
    e = await refused(
      files.readManifest(await folder([{ ...a, file: 'disk-1.qcow2', format: 'qcow2' }])),
      'SNAPSHOT_INVALID',
    );
    assert.match(e.message, /names disk 0's copy disk-1\.qcow2/);
  });

  test('refused when a copy is missing, of another size, or a link', async () => {
    const id = await folder(DISKS);
    const copy = path.join(files.dirOf(id), 'disk-1.qcow2');
    await writeFile(copy, COPY.subarray(1));
    let e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /disk-1\.qcow2 has 8191 bytes, the manifest says 8192/);
    await rm(copy);
    e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /disk-1\.qcow2 is missing/);
    await symlink(path.join(files.dirOf(id), 'disk-0.raw'), copy);
    e = await refused(files.readManifest(id), 'SNAPSHOT_INVALID');
    assert.match(e.message, /disk-1\.qcow2 is not a regular file/);
  });
});
