/**
 * The volume store against real parts: qemu-img making real files in a temp
 * folder, a real SQLite file. Create, list, get, resize, clone (overlay and
 * full), delete; refusals with nothing changed: a planted symlink, delete and
 * attach while attached, too big for the free space or the cap, shrinking,
 * an import from outside the import folder.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createStore, type Store } from '../../../host/store/index.js';
import { silentLogger } from '../../../host/log.js';
import { createVolumeFiles } from '../../../host/volumes/files.js';
import type { createVolumeAttach } from '../../../host/volumes/attach.js';
import { MIB, type VolumeManager } from '../../../host/volumes/manager.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm, refused, volumeRig } from '../../support/volumes.js';

const log = silentLogger();
let dir: string;
let store: Store;
let volumes: VolumeManager;
let attach: ReturnType<typeof createVolumeAttach>;
let volDir: string;
let importDir: string;
const published: { topic: string; payload: string }[] = [];

function build(maxBytes: number | null): VolumeManager {
  const rig = volumeRig({ store, volDir, log, published, maxBytes, importDir });
  attach = rig.attach;
  return rig.volumes;
}

before(async () => {
  dir = await makeTempDir('mvirt-volumes-');
  volDir = path.join(dir, 'volumes');
  importDir = path.join(dir, 'import');
  await mkdir(importDir);
  store = createStore(path.join(dir, 'mvirt.db'), log);
  await createVolumeFiles(volDir).init();
  volumes = build(null);
});
after(async () => {
  store.close();
  await removeDir(dir);
});

/** What must not change when a call is refused. */
function snapshot(): string {
  return JSON.stringify({
    files: readdirSync(volDir).sort(),
    rows: store.volumes.list(),
    disks: store.db.prepare('SELECT * FROM vm_disks ORDER BY vm_id, position').all(),
  });
}

const addVm = (id: string): void => addStoreVm(store, id);

const info = (file: string) =>
  JSON.parse(
    execFileSync('qemu-img', ['info', '--force-share', '--output=json', file], {
      encoding: 'utf8',
    }),
  ) as { format: string; 'virtual-size': number; 'backing-filename'?: string };

describe('volumes', () => {
  test('create raw and qcow2: files made by qemu-img, rows, retained records, audit events', async () => {
    const raw = await volumes.create({ name: 'data', sizeMiB: 8 });
    const q = await volumes.create({ name: 'data-q', sizeMiB: 16, format: 'qcow2' });
    assert.match(raw.id, /^vol-[0-9a-f]{12}$/);
    assert.equal(raw.state, 'available');
    assert.equal(raw.sizeBytes, 8 * MIB);
    assert.deepEqual(raw.attachedTo, []);
    assert.equal(info(path.join(volDir, `${raw.id}.raw`)).format, 'raw');
    const qi = info(path.join(volDir, `${q.id}.qcow2`));
    assert.equal(qi.format, 'qcow2');
    assert.equal(qi['virtual-size'], 16 * MIB);
    assert.deepEqual(
      volumes.list().map((v) => v.name),
      ['data', 'data-q'],
    );
    const pub = published.findLast((m) => m.topic === `mvirt/h/volume/${raw.id}/state`);
    assert.equal((JSON.parse(pub!.payload) as { name: string }).name, 'data');
    const ev = store.events.query({ objectId: raw.id });
    assert.ok(ev.some((e) => e.level === 'audit' && e.message === 'data: created'));
    await refused(volumes.create({ name: 'data', sizeMiB: 1 }), 'VOLUME_EXISTS');
  });

  test('get measures actual usage; resize grows only', async () => {
    const v = await volumes.get('data');
    const file = path.join(volDir, `${v.id}.raw`);
    assert.equal(v.usedBytes, statSync(file).blocks * 512);
    const before = snapshot();
    await refused(volumes.resize('data', 4), 'INVALID_PARAMS');
    assert.equal(snapshot(), before);
    const r = await volumes.resize('data', 32);
    assert.equal(r.sizeBytes, 32 * MIB);
    assert.equal(info(file)['virtual-size'], 32 * MIB);
    assert.ok(
      store.events.query({ objectId: v.id }).some((e) => /resized to 32 MiB/.test(e.message)),
    );
  });

  test('clone as overlay is copy-on-write; full clone is independent', async () => {
    const tmpl = await volumes.create({ name: 'tmpl', sizeMiB: 4 });
    const tfile = path.join(volDir, `${tmpl.id}.raw`);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 64k', tfile]);
    const ov = await volumes.clone({ volume: 'tmpl', name: 'ov' });
    const ofile = path.join(volDir, `${ov.id}.qcow2`);
    assert.equal(ov.format, 'qcow2');
    assert.equal(ov.backing, tmpl.id);
    assert.equal(info(ofile)['backing-filename'], `${tmpl.id}.raw`, 'relative backing file');
    // The overlay reads the template's data; its writes stay in the overlay.
    const read = (f: string, fmt: string, pattern: string) =>
      execFileSync('qemu-io', ['-f', fmt, '-c', `read -P ${pattern} 0 64k`, f], {
        encoding: 'utf8',
      });
    assert.doesNotMatch(read(ofile, 'qcow2', '0x61'), /Pattern verification failed/);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x62 0 64k', ofile]);
    assert.doesNotMatch(read(ofile, 'qcow2', '0x62'), /Pattern verification failed/);
    assert.doesNotMatch(
      read(tfile, 'raw', '0x61'),
      /Pattern verification failed/,
      'template untouched',
    );
    assert.ok(statSync(ofile).size < 2 * MIB, 'the overlay holds only what was written');

    const full = await volumes.clone({ volume: 'tmpl', name: 'full', mode: 'full' });
    assert.equal(full.backing, null);
    assert.equal(full.format, 'raw');
    const ffile = path.join(volDir, `${full.id}.raw`);
    assert.doesNotMatch(read(ffile, 'raw', '0x61'), /Pattern verification failed/);
    assert.equal(info(ffile)['backing-filename'], undefined);

    // A template with clones is not deleted, nor attached read-write.
    const before = snapshot();
    await refused(volumes.delete('tmpl'), 'VOLUME_IN_USE');
    await refused(() => attach.resolve([{ volume: 'tmpl' }]), 'VOLUME_IN_USE');
    assert.equal(snapshot(), before);
    assert.deepEqual(attach.resolve([{ volume: 'tmpl', readOnly: true }]), [
      { volume: tmpl.id, readOnly: true },
    ]);
  });

  test('attached read-write to one VM: no second attach, no delete; released with the VM', async () => {
    addVm('vm-a');
    addVm('vm-b');
    const v = await volumes.create({ name: 'shared', sizeMiB: 1 });
    store.db.transaction(() =>
      attach.attach('vm-a', 'vm-a', attach.resolve([{ volume: 'shared' }])),
    )();
    const got = store.volumes.get(v.id)!;
    assert.equal(got.state, 'attached');
    assert.deepEqual(got.attachedTo, [{ vm: 'vm-a', readOnly: false }]);
    assert.deepEqual(store.vms.get('vm-a')!.disks, [
      { volume: v.id, readOnly: false, serial: v.id },
    ]);
    const before = snapshot();
    await refused(() => attach.resolve([{ volume: 'shared', readOnly: true }]), 'VOLUME_IN_USE');
    await refused(
      () =>
        store.db.transaction(() =>
          attach.attach('vm-b', 'vm-b', [{ volume: v.id, readOnly: false }]),
        )(),
      'VOLUME_IN_USE',
    );
    await refused(volumes.delete('shared'), 'VOLUME_IN_USE');
    assert.equal(snapshot(), before);
    // The VM goes: its disk rows cascade, the volume is available again.
    const disks = store.volumes.disksOf('vm-a');
    store.db.transaction(() => {
      store.vms.delete('vm-a');
      attach.released('vm-a', 'vm-a', disks);
    })();
    assert.equal(store.volumes.get(v.id)!.state, 'available');
    await volumes.delete('shared');
    assert.equal(store.volumes.get(v.id), undefined);
    assert.ok(!readdirSync(volDir).includes(`${v.id}.raw`));
    const last = published.findLast((m) => m.topic === `mvirt/h/volume/${v.id}/state`);
    assert.equal(last!.payload, '', 'an empty retained message on delete');
  });

  test('a planted symlink is never followed: refused, target untouched', async () => {
    const target = path.join(dir, 'secret');
    await writeFile(target, 'do not touch');
    const v = await volumes.create({ name: 'victim', sizeMiB: 1 });
    const file = path.join(volDir, `${v.id}.raw`);
    await rm(file);
    await symlink(target, file);
    const before = snapshot();
    await refused(volumes.get('victim'), 'STORAGE_UNSAFE');
    await refused(volumes.resize('victim', 64), 'STORAGE_UNSAFE');
    await refused(volumes.clone({ volume: 'victim', name: 'c2', mode: 'full' }), 'STORAGE_UNSAFE');
    await refused(volumes.delete('victim'), 'STORAGE_UNSAFE');
    assert.equal(snapshot(), before);
    assert.equal(readFileSync(target, 'utf8'), 'do not touch');
    assert.ok(lstatSync(file).isSymbolicLink(), 'left as it was');
    // A boot with it attached is refused before QEMU could open the link.
    addVm('vm-c');
    store.volumes.addDisks('vm-c', [{ volume: v.id, readOnly: true }]);
    await refused(attach.bootDisks('vm-c'), 'STORAGE_UNSAFE');
    // The volumes folder itself as a link is refused too.
    const other = path.join(dir, 'elsewhere');
    await mkdir(other);
    const linked = path.join(dir, 'linked-volumes');
    await symlink(other, linked);
    await refused(createVolumeFiles(linked).init(), 'STORAGE_UNSAFE');
  });

  test('capacity: more than the free space or --storage-max-gib is STORAGE_FULL naming what is free', async () => {
    const before = snapshot();
    const e = await refused(
      volumes.create({ name: 'huge', sizeMiB: 64 * 1024 * 1024 }),
      'STORAGE_FULL',
    );
    assert.match(e.message, /free in the volumes folder/);
    assert.ok((e.details as { freeBytes: number }).freeBytes > 0);
    const capped = build(store.volumes.totals().provisioned + 10 * MIB);
    const c = await refused(capped.create({ name: 'big', sizeMiB: 11 }), 'STORAGE_FULL');
    assert.equal((c.details as { freeBytes: number }).freeBytes, 10 * MIB);
    assert.match(c.message, /--storage-max-gib/);
    await refused(capped.clone({ volume: 'data', name: 'big2' }), 'STORAGE_FULL');
    assert.equal(snapshot(), before);
    const ok = await capped.create({ name: 'fits', sizeMiB: 10 });
    assert.equal(ok.sizeBytes, 10 * MIB);
    const s = capped.capacity.info();
    assert.equal(s.maxBytes, s.provisionedBytes);
    assert.ok(s.freeBytes > 0);
  });

  test('import only from the import folder, only plain self-contained files', async () => {
    const src = path.join(importDir, 'disk.img');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '2M']);
    const v = await volumes.create({ name: 'imported', importFrom: 'disk.img', format: 'raw' });
    assert.equal(v.sizeBytes, 2 * MIB);
    assert.equal(info(path.join(volDir, `${v.id}.raw`)).format, 'raw');
    const before = snapshot();
    // A qcow2 whose backing file is a host file: never read.
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'raw',
      '-b',
      path.join(dir, 'secret'),
      path.join(importDir, 'evil.img'),
    ]);
    await refused(volumes.create({ name: 'evil', importFrom: 'evil.img' }), 'IMPORT_REFUSED');
    await symlink(path.join(dir, 'secret'), path.join(importDir, 'link.img'));
    await refused(volumes.create({ name: 'link', importFrom: 'link.img' }), 'IMPORT_REFUSED');
    await refused(volumes.create({ name: 'missing', importFrom: 'nope.img' }), 'IMPORT_REFUSED');
    await refused(volumes.create({ name: 'up', importFrom: '..' }), 'IMPORT_REFUSED');
    assert.equal(snapshot(), before);
  });
});
