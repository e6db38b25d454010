/**
 * The snapshot manager on real parts (SQLite, the snapshot folders, the event
 * log) with the VMs' side faked: a save writes a small state.bin and ram.bin
 * into the snapshot's folder and hashes them as vm/save.ts does. take,
 * get, list, delete and their dry runs, what a failed or crashed save leaves
 * (nothing), and the forks that keep a snapshot from being deleted.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { runAs } from '../../../host/auth/actor.js';
import { createEventLog, type EventLog } from '../../../host/events/log.js';
import { silentLogger } from '../../../host/log.js';
import { createSnapshotFiles, type SnapshotFiles } from '../../../host/snapshots/files.js';
import {
  createSnapshotManager,
  type SnapshotManager,
  type SnapshotManagerDeps,
} from '../../../host/snapshots/manager.js';
import { createStore, type Store } from '../../../host/store/index.js';
import type { ResolvedImage } from '../../../host/vm/images.js';
import { MvirtError } from '../../../protocol/errors.js';
import { SnapshotRecord } from '../../../protocol/records.js';
import { topics } from '../../../protocol/topics.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm, refused } from '../../support/volumes.js';

const log = silentLogger();
/** What the fake save writes: the device state and a copy of guest RAM. */
const FILES = { 'state.bin': Buffer.alloc(8192, 5), 'ram.bin': Buffer.alloc(3 * 4096, 6) };
const BYTES = FILES['state.bin'].length + FILES['ram.bin'].length;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const HASHES = { 'state.bin': sha(FILES['state.bin']), 'ram.bin': sha(FILES['ram.bin']) };
const SAVED = {
  backend: 'qemu',
  version: '9.2.0',
  machine: 'pc-i440fx-9.2',
  memoryMiB: 256,
  vcpus: 1,
  devices: 'd'.repeat(64),
  ram: 'file' as const,
  files: { 'state.bin': FILES['state.bin'].length, 'ram.bin': FILES['ram.bin'].length },
  bytes: BYTES,
};

let dir: string;
let store: Store;
let files: SnapshotFiles;
let events: EventLog;
let snaps: SnapshotManager;
/** VMs whose state can be saved now (the others are VM_BAD_STATE). */
const up = new Set<string>();
/** Runs inside the fake save, after the state's files are written. */
let during: (() => void | Promise<void>) | undefined;
let saveFails: Error | undefined;
/** What the fake save reports as the files' sha256 (a save's own by default). */
let hashesOf: (() => Record<string, string>) | undefined;
/** The folders saved into. */
const saves: string[] = [];

const vmsSide: SnapshotManagerDeps['vms'] = {
  get(ref) {
    const vm = store.vms.find(ref);
    if (!vm) throw new MvirtError('VM_NOT_FOUND', `no VM ${ref}`);
    return vm;
  },
  async checkSavable(ref) {
    const vm = vmsSide.get(ref);
    if (!up.has(vm.id)) throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is stopped`);
    return { vm, disks: [] };
  },
  async saveForSnapshot(id, dir) {
    saves.push(dir);
    for (const [name, data] of Object.entries(FILES))
      await writeFile(path.join(dir, name), data, { flag: 'wx' });
    await during?.();
    if (saveFails) throw saveFails;
    return {
      saved: SAVED,
      hashes: hashesOf?.() ?? HASHES,
      disks: [],
      vm: store.vms.get(id)!,
      ms: 7,
      diskMs: 0,
    };
  },
};

before(async () => {
  dir = await makeTempDir('mvirt-snapmgr-');
  store = createStore(path.join(dir, 'mvirt.db'), log);
  files = createSnapshotFiles(path.join(dir, 'snapshots'));
  events = createEventLog({
    repo: store.events,
    bus: {
      publish: () => Promise.resolve(),
      subscribe: () => Promise.resolve(() => Promise.resolve()),
    },
    topics: topics('mvirt/h'),
    log,
    retention: { days: 30, maxRows: 10_000 },
  });
  const image = { name: 'default', manifest: { key: 'key-1' } } as unknown as ResolvedImage;
  snaps = createSnapshotManager({
    store,
    files,
    images: {
      resolve: (name: string) =>
        name === 'default'
          ? Promise.resolve(image)
          : Promise.reject(new MvirtError('IMAGE_NOT_FOUND', name)),
    } as unknown as SnapshotManagerDeps['images'],
    vms: vmsSide,
    events,
    log,
    dataDir: dir,
  });
  for (const id of ['vm-src', 'vm-other', 'vm-off']) addStoreVm(store, id);
  up.add('vm-src').add('vm-other');
});
after(async () => {
  events.close();
  store.close();
  await removeDir(dir);
});
afterEach(() => {
  during = undefined;
  saveFails = undefined;
  hashesOf = undefined;
});

const folders = (): string[] => (existsSync(files.root) ? readdirSync(files.root).sort() : []);
const audits = (objectId: string) =>
  store.events.query({ objectId, level: 'audit' }).map((e) => e.message);
const alice = <R>(fn: () => R, scope: string | null = null): R =>
  runAs(
    {
      actor: { kind: 'user', user: 'alice', clientId: 'c1' },
      access: { role: 'operator', scope },
    },
    fn,
  );

describe('take', () => {
  test("a ready snapshot: row, the state's files and manifest, an audit event naming who took it", async () => {
    const rec = await alice(() => snaps.take('vm-src', 'warm'));
    assert.deepEqual(SnapshotRecord.parse(rec), rec);
    assert.match(rec.id, /^snap-[0-9a-f]{12}$/);
    assert.equal(rec.state, 'ready');
    assert.equal(rec.bytes, BYTES, 'all its files together');
    assert.equal(rec.createdBy, 'user:alice');
    assert.deepEqual(rec.source, { vm: 'vm-src', name: 'vm-src' });
    assert.deepEqual(rec.hypervisor, { version: '9.2.0', machine: 'pc-i440fx-9.2' });
    assert.equal(saves.at(-1), files.dirOf(rec.id), 'saved into its own folder');
    assert.deepEqual(readdirSync(files.dirOf(rec.id)).sort(), [
      'manifest.json',
      'ram.bin',
      'state.bin',
    ]);
    const m = await files.readManifest(rec.id);
    assert.equal(m.name, 'warm');
    assert.equal(m.createdBy, 'user:alice');
    assert.deepEqual(m.image, { name: 'default', key: 'key-1' });
    assert.equal(m.source.generation, 0);
    assert.deepEqual(m.state, SAVED);
    assert.deepEqual(m.files, {
      'state.bin': { bytes: FILES['state.bin'].length, sha256: HASHES['state.bin'] },
      'ram.bin': { bytes: FILES['ram.bin'].length, sha256: HASHES['ram.bin'] },
    });
    const row = store.snapshots.get(rec.id)!;
    assert.deepEqual(row.saved, SAVED);
    assert.deepEqual(JSON.parse(row.sha256!), HASHES, "the row keeps each file's sha256");
    assert.equal(row.createdAt, m.createdAt, 'the manifest and the row agree');
    assert.deepEqual(audits(rec.id), [
      `vm-src: snapshot warm taken (${BYTES} bytes; the VM paused 7 ms)`,
    ]);
    const ev = store.events.query({ objectId: rec.id })[0]!;
    assert.deepEqual(ev.objects.sort(), [rec.id, 'vm-src']);
    assert.deepEqual(ev.data, {
      pausedMs: 7,
      files: SAVED.files,
      ram: 'file',
      machine: 'pc-i440fx-9.2',
    });
  });

  test("the source's identity generation goes into the row and the manifest", async () => {
    store.vms.setRestored(
      'vm-other',
      5,
      { snapshot: 'suspend', generation: 5, spawnToRunningMs: 1 },
      '2026-01-01T00:00:00Z',
    );
    const rec = await snaps.take('vm-other', 'gen5');
    assert.equal(store.snapshots.get(rec.id)!.generation, 5);
    assert.equal((await files.readManifest(rec.id)).source.generation, 5);
    assert.equal(rec.createdBy, 'mvirtd', 'outside a request: mvirtd took it');
  });

  test('while saving it is neither listed nor found, but its name is taken', async () => {
    let seen: { listed: string[]; code: string; dup: string } | undefined;
    during = async () => {
      const e = await refused(() => snaps.get('midway'), 'SNAPSHOT_NOT_FOUND');
      const dup = await refused(snaps.take('vm-other', 'midway'), 'SNAPSHOT_EXISTS');
      seen = { listed: snaps.list().map((s) => s.name), code: e.code, dup: dup.code };
    };
    await snaps.take('vm-src', 'midway');
    assert.ok(seen);
    assert.ok(!seen.listed.includes('midway'));
    assert.equal(snaps.get('midway').state, 'ready');
  });

  test('refusals change nothing: taken name (or id), a VM that cannot be saved, no such VM', async () => {
    const before = { rows: store.snapshots.list().length, dirs: folders(), saves: saves.length };
    const warm = snaps.get('warm');
    await refused(snaps.take('vm-src', 'warm'), 'SNAPSHOT_EXISTS');
    await refused(snaps.take('vm-src', warm.id), 'SNAPSHOT_EXISTS');
    await refused(snaps.take('vm-off', 'fresh'), 'VM_BAD_STATE');
    await refused(snaps.take('vm-nope', 'fresh'), 'VM_NOT_FOUND');
    await refused(snaps.plan.take('vm-off', 'fresh'), 'VM_BAD_STATE');
    await refused(snaps.plan.take('vm-src', 'warm'), 'SNAPSHOT_EXISTS');
    assert.deepEqual(
      { rows: store.snapshots.list().length, dirs: folders(), saves: saves.length },
      before,
    );
  });

  test('the same name twice at once: one snapshot, the other SNAPSHOT_EXISTS', async () => {
    const dirs = folders().length;
    const [a, b] = await Promise.allSettled([
      snaps.take('vm-src', 'twin'),
      snaps.take('vm-other', 'twin'),
    ]);
    assert.equal(a.status, 'fulfilled');
    assert.equal(b.status, 'rejected');
    assert.equal((b.reason as MvirtError).code, 'SNAPSHOT_EXISTS');
    assert.equal(
      snaps.get('twin').source.vm,
      'vm-src',
      "the loser did not delete the winner's row",
    );
    assert.equal(folders().length, dirs + 1);
  });

  test('a failed save leaves no row, no folder, no owner label', async () => {
    const rows = store.snapshots.list().length;
    const dirs = folders();
    saveFails = new MvirtError('HYPERVISOR_ERROR', 'migrate failed');
    let id = '';
    during = () => {
      id = store.snapshots.find('broken')!.id;
    };
    await alice(() => refused(snaps.take('vm-src', 'broken'), 'HYPERVISOR_ERROR'), 'a');
    assert.match(id, /^snap-/);
    assert.equal(store.snapshots.list().length, rows);
    assert.deepEqual(folders(), dirs);
    assert.equal(store.owners.get('snapshot', id), null);
    assert.ok(!store.snapshots.nameTaken('broken'), 'the name is free again');
  });

  test('a save without the sha256 of one of its files leaves nothing either', async () => {
    const rows = store.snapshots.list().length;
    const dirs = folders();
    const savesBefore = saves.length;
    hashesOf = () => ({ 'state.bin': HASHES['state.bin'] });
    // The manifest is refused before it is written (its files' sha256 must be there).
    await assert.rejects(snaps.take('vm-src', 'unhashed'), (err: Error) => {
      assert.equal(err.name, 'ZodError');
      assert.match(err.message, /"ram\.bin",\s*"sha256"/);
      return true;
    });
    assert.equal(saves.length, savesBefore + 1, 'it was saved');
    assert.equal(store.snapshots.list().length, rows);
    assert.deepEqual(folders(), dirs, 'its folder and files removed');
    assert.ok(!store.snapshots.nameTaken('unhashed'));
  });

  test('the dry run: what it checks, makes and changes; nothing made', async () => {
    const dirs = folders();
    const plan = await snaps.plan.take('vm-src', 'planned');
    assert.equal(plan.method, 'vm.snapshot');
    assert.ok(plan.admission.includes('name planned is free'));
    assert.deepEqual(plan.files.create, [
      'snapshots/<new id>/',
      'snapshots/<new id>/<state files>',
      'snapshots/<new id>/manifest.json',
    ]);
    assert.deepEqual(plan.changes, ['snapshot planned: created from VM vm-src']);
    assert.deepEqual(folders(), dirs);
    assert.ok(!store.snapshots.nameTaken('planned'));
  });
});

describe('get and list', () => {
  test('get by id or name; SNAPSHOT_NOT_FOUND otherwise', () => {
    const w = snaps.get('warm');
    assert.deepEqual(snaps.get(w.id), w);
    assert.ok(!('sha256' in w) && !('imageKey' in w), 'the public record');
    assert.equal(snaps.resolveId('warm'), w.id);
    assert.equal(snaps.resolveId('nope'), undefined);
    assert.throws(() => snaps.get('nope'), { code: 'SNAPSHOT_NOT_FOUND' });
  });

  test('list: all ready ones, or those of a VM by its id or name', () => {
    // Created within the same millisecond they are ordered by id: compare as sets.
    const all = snaps.list().map((s) => s.name);
    assert.deepEqual(all.sort(), ['gen5', 'midway', 'twin', 'warm']);
    assert.deepEqual(
      snaps.list('vm-other').map((s) => s.name),
      ['gen5'],
    );
    assert.deepEqual(
      snaps
        .list('vm-src')
        .map((s) => s.name)
        .sort(),
      ['midway', 'twin', 'warm'],
    );
    assert.deepEqual(snaps.list('vm-off'), []);
    assert.deepEqual(snaps.list('nobody'), []);
  });

  test('a deleted source VM: by its id or by the name it had; a new VM of that name is another', async () => {
    addStoreVm(store, 'vm-gone');
    store.db.prepare(`UPDATE vms SET name = 'ghost' WHERE id = 'vm-gone'`).run();
    up.add('vm-gone');
    const s = await snaps.take('ghost', 'of-ghost');
    assert.deepEqual(s.source, { vm: 'vm-gone', name: 'ghost' });
    store.vms.delete('vm-gone');
    assert.deepEqual(
      snaps.list('ghost').map((x) => x.name),
      ['of-ghost'],
    );
    assert.deepEqual(
      snaps.list('vm-gone').map((x) => x.name),
      ['of-ghost'],
    );
    addStoreVm(store, 'vm-new');
    store.db.prepare(`UPDATE vms SET name = 'ghost' WHERE id = 'vm-new'`).run();
    assert.deepEqual(snaps.list('ghost'), [], 'ghost is the new VM now');
    store.vms.delete('vm-new');
  });
});

describe('delete', () => {
  test('removes the row, the folder and the owner label; the audit names the source VM', async () => {
    const s = await alice(() => snaps.take('vm-src', 'doomed'), 'a');
    assert.equal(store.owners.get('snapshot', s.id), 'a');
    const plan = snaps.plan.remove('doomed');
    assert.deepEqual(plan.files.remove, [`snapshots/${s.id}/`]);
    assert.ok(existsSync(files.dirOf(s.id)), 'the dry run removed nothing');
    assert.deepEqual(await snaps.delete('doomed'), {});
    assert.ok(!existsSync(files.dirOf(s.id)));
    assert.equal(store.snapshots.get(s.id), undefined);
    assert.equal(store.owners.get('snapshot', s.id), null);
    const ev = store.events.query({ objectId: s.id, level: 'audit' }).at(-1)!;
    assert.equal(ev.message, 'snapshot doomed deleted');
    assert.deepEqual(ev.objects.sort(), [s.id, 'vm-src'].sort());
    await refused(snaps.delete('doomed'), 'SNAPSHOT_NOT_FOUND');
    assert.throws(() => snaps.plan.remove('doomed'), { code: 'SNAPSHOT_NOT_FOUND' });
  });

  test('refused while a fork waits to resume from it, unless forced', async () => {
    const s = await snaps.take('vm-src', 'base');
    addStoreVm(store, 'vm-fork');
    store.vms.markFork('vm-fork', s.id, '2026-01-01T00:00:00Z');
    const e = await refused(snaps.delete('base'), 'SNAPSHOT_IN_USE');
    assert.match(e.message, /not started yet: vm-fork; start or delete them first/);
    assert.deepEqual(e.details, { vms: ['vm-fork'] });
    assert.throws(() => snaps.plan.remove('base'), { code: 'SNAPSHOT_IN_USE' });
    assert.ok(existsSync(files.dirOf(s.id)));
    assert.equal(snaps.get('base').id, s.id);
    await snaps.delete('base', { force: true });
    assert.throws(() => snaps.get('base'), { code: 'SNAPSHOT_NOT_FOUND' });
    assert.ok(!existsSync(files.dirOf(s.id)));
    store.vms.delete('vm-fork');
  });

  test('a fork that resumed, or was suspended since, no longer holds it', async () => {
    const s = await snaps.take('vm-src', 'used');
    addStoreVm(store, 'vm-f1');
    addStoreVm(store, 'vm-f2');
    const t = '2026-01-01T00:00:00Z';
    for (const f of ['vm-f1', 'vm-f2']) {
      store.vms.markFork(f, s.id, t);
      store.vms.setRestored(f, 1, { snapshot: s.id, generation: 1, spawnToRunningMs: 1 }, t);
    }
    // vm-f2 was suspended since: it resumes from its own state folder, not the snapshot's.
    store.vms.setPendingRestore('vm-f2', { from: 'suspend', saved: SAVED, hashes: HASHES }, t);
    assert.equal(snaps.plan.remove('used').method, 'snapshot.delete');
    await snaps.delete('used');
    assert.equal(store.vms.get('vm-f1')!.restoredFrom, s.id, 'the forks keep where they came from');
    store.vms.delete('vm-f1');
    store.vms.delete('vm-f2');
  });
});

describe('recover', () => {
  test('removes saving rows with their folders and folders without a row, nothing else', async () => {
    const keep = snaps.list().map((s) => s.id);
    // A save a crash interrupted: its row says saving, its folder has a partial state.
    const crashed = 'snap-00000000c0de';
    store.snapshots.insert(
      {
        id: crashed,
        name: 'crashed',
        sourceVm: 'vm-src',
        sourceName: 'vm-src',
        image: 'default',
        imageKey: 'key-1',
        backend: 'qemu',
        vcpus: 1,
        memoryMiB: 256,
        network: { mode: 'none' },
        generation: 0,
        createdBy: null,
      },
      new Date().toISOString(),
    );
    await files.prepare(crashed);
    await writeFile(path.join(files.dirOf(crashed), 'state.bin'), 'partial');
    // A folder whose row never made it, and things that are not snapshot folders.
    const orphan = 'snap-0000000000ff';
    await files.prepare(orphan);
    await writeFile(path.join(files.root, 'notes.txt'), 'mine');
    await mkdir(path.join(files.root, 'snap-XYZ'));
    await snaps.recover();
    assert.equal(store.snapshots.get(crashed), undefined);
    assert.ok(!store.snapshots.nameTaken('crashed'));
    assert.deepEqual(folders(), [...keep, 'notes.txt', 'snap-XYZ'].sort());
    assert.deepEqual(
      snaps.list().map((s) => s.id),
      keep,
    );
    for (const id of keep) await files.readManifest(id);
    await snaps.recover();
    assert.deepEqual(folders(), [...keep, 'notes.txt', 'snap-XYZ'].sort(), 'idempotent');
  });

  test('with no snapshots folder at all', async () => {
    const empty = createSnapshotManager({
      store,
      files: createSnapshotFiles(path.join(dir, 'none')),
      images: {} as SnapshotManagerDeps['images'],
      vms: vmsSide,
      events,
      log,
      dataDir: dir,
    });
    await empty.recover();
  });
});
