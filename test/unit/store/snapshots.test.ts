/**
 * The snapshot rows and the VMs' restore columns on a real SQLite file: the
 * migration that added them (over a database with VMs in it), a snapshot's
 * life saving → ready → deleted with its owner label, the public record
 * without the internal fields, and a fork's and a suspended VM's restore facts.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { runAs } from '../../../host/auth/actor.js';
import { silentLogger } from '../../../host/log.js';
import { createStore, type NewSnapshot, type Store } from '../../../host/store/index.js';
import { MIGRATIONS } from '../../../host/store/migrations.js';
import { publicSnapshot } from '../../../host/store/snapshots.js';
import { SnapshotRecord, VmRecord } from '../../../protocol/records.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm } from '../../support/volumes.js';

const log = silentLogger();
let dir: string;
before(async () => {
  dir = await makeTempDir('mvirt-store-snap-');
});
after(() => removeDir(dir));
let n = 0;
const open = (): Store => createStore(path.join(dir, `db-${++n}.db`), log);

/** A saved state of state.bin and a ram.bin of `ram` bytes (through the stream without one). */
const saved = (bytes = 1000, ram = 0) => ({
  backend: 'qemu',
  version: '9.2.0',
  machine: 'pc-i440fx-9.2',
  memoryMiB: 256,
  vcpus: 1,
  devices: 'd'.repeat(64),
  ram: ram > 0 ? ('file' as const) : ('stream' as const),
  files: { 'state.bin': bytes - ram, ...(ram > 0 ? { 'ram.bin': ram } : {}) },
  bytes,
});
/** Each file's sha256, as mvirtd keeps them (JSON text). */
const hashes = { 'state.bin': 'a'.repeat(64), 'ram.bin': 'b'.repeat(64) };
const snap = (id: string, name: string, sourceVm = 'vm-a', over: Partial<NewSnapshot> = {}) => ({
  id,
  name,
  sourceVm,
  sourceName: sourceVm,
  image: 'default',
  imageKey: 'key-1',
  backend: 'qemu',
  vcpus: 1,
  memoryMiB: 256,
  network: { mode: 'user' as const },
  generation: 3,
  createdBy: 'user:alice',
  ...over,
});
const T0 = '2026-01-01T00:00:00.000Z';
const T1 = '2026-01-01T00:00:01.000Z';
const scoped = <R>(scope: string, fn: () => R): R =>
  runAs(
    {
      actor: { kind: 'user', user: 'alice', clientId: 'c' },
      access: { role: 'operator', scope },
    },
    fn,
  );

test("the migration adds the snapshots table and VMs' restore columns to a database with VMs", () => {
  const file = path.join(dir, 'old.db');
  const raw = new Database(file);
  // The schema as it was just before this migration, with a VM in it.
  const at = MIGRATIONS.findIndex((m) => m.name === 'snapshots, suspend, restore');
  assert.ok(at > 0);
  for (const m of MIGRATIONS.slice(0, at)) m.up(raw);
  raw.pragma(`user_version = ${at}`);
  raw
    .prepare(
      `INSERT INTO vms (id, name, state, vcpus, memory_mib, kind, image, backend, network,
         metadata, created_at, updated_at)
       VALUES ('vm-old', 'old', 'stopped', 1, 256, 'service', 'default', 'qemu',
         '{"mode":"none"}', '{}', ?, ?)`,
    )
    .run(T0, T0);
  assert.throws(() => raw.prepare('SELECT * FROM snapshots').all(), /no such table/);
  raw.close();
  const s = createStore(file, log);
  assert.equal(s.db.pragma('user_version', { simple: true }), MIGRATIONS.length);
  assert.deepEqual(s.vms.restoreState('vm-old'), { generation: 0, pending: null });
  const old = s.vms.get('vm-old')!;
  assert.equal(old.restoredFrom, undefined);
  assert.equal(old.restore, undefined);
  assert.deepEqual(s.snapshots.list(), []);
  s.close();
});

describe('snapshot rows', () => {
  let s: Store;
  before(() => {
    s = open();
  });
  after(() => s.close());

  test('insert is saving: no saved state yet, a public record of 0 bytes', () => {
    s.snapshots.insert(snap('snap-000000000001', 'warm'), T0);
    const row = s.snapshots.get('snap-000000000001')!;
    assert.equal(row.state, 'saving');
    assert.equal(row.saved, null);
    assert.equal(row.sha256, null);
    assert.equal(row.bytes, 0);
    assert.deepEqual(row.hypervisor, { version: '', machine: '' });
    assert.deepEqual(row.source, { vm: 'vm-a', name: 'vm-a' });
    assert.deepEqual(row.network, { mode: 'user' });
    assert.equal(row.generation, 3);
    assert.equal(row.imageKey, 'key-1');
    assert.equal(row.createdAt, T0);
    assert.equal(row.createdBy, 'user:alice');
    assert.deepEqual(s.snapshots.saving(), ['snap-000000000001']);
  });

  test("markReady only from saving: the saved state (its files) and the files' sha256 kept", () => {
    const id = 'snap-000000000001';
    const state = saved(4096 + 8192, 8192);
    assert.deepEqual(state.files, { 'state.bin': 4096, 'ram.bin': 8192 });
    assert.equal(s.snapshots.markReady(id, state, JSON.stringify(hashes)), true);
    const row = s.snapshots.get(id)!;
    assert.equal(row.state, 'ready');
    assert.deepEqual(row.saved, state, 'ram and files as saved');
    assert.deepEqual(Object.keys(row.saved!.files), ['state.bin', 'ram.bin'], 'in their order');
    assert.equal(row.sha256, JSON.stringify(hashes), 'the text it was given');
    assert.deepEqual(JSON.parse(row.sha256!), hashes);
    assert.equal(row.bytes, 4096 + 8192, 'all its files together');
    assert.deepEqual(row.hypervisor, { version: '9.2.0', machine: 'pc-i440fx-9.2' });
    assert.deepEqual(s.snapshots.saving(), []);
    // Once ready, a second markReady changes nothing; an unknown id neither.
    assert.equal(s.snapshots.markReady(id, saved(1), JSON.stringify({ 'state.bin': 'c' })), false);
    assert.equal(s.snapshots.get(id)!.sha256, JSON.stringify(hashes));
    assert.deepEqual(s.snapshots.get(id)!.saved, state);
    assert.equal(s.snapshots.markReady('snap-00000000dead', saved(), '{}'), false);
  });

  test('find and nameTaken by id or by name; names are unique', () => {
    assert.equal(s.snapshots.find('warm')?.id, 'snap-000000000001');
    assert.equal(s.snapshots.find('snap-000000000001')?.name, 'warm');
    assert.equal(s.snapshots.find('cold'), undefined);
    assert.equal(s.snapshots.get('warm'), undefined, 'get is by id only');
    assert.ok(s.snapshots.nameTaken('warm'));
    assert.ok(s.snapshots.nameTaken('snap-000000000001'), 'a name equal to an id is taken');
    assert.ok(!s.snapshots.nameTaken('cold'));
    assert.throws(() => s.snapshots.insert(snap('snap-000000000002', 'warm'), T1), /UNIQUE/);
    assert.equal(s.snapshots.list().length, 1);
  });

  test('list: all in order of creation, or those of one source VM', () => {
    s.snapshots.insert(snap('snap-000000000003', 'b-first', 'vm-b'), T0);
    s.snapshots.insert(snap('snap-000000000004', 'a-later', 'vm-a'), T1);
    assert.deepEqual(
      s.snapshots.list().map((x) => x.name),
      ['warm', 'b-first', 'a-later'],
    );
    assert.deepEqual(
      s.snapshots.list('vm-a').map((x) => x.name),
      ['warm', 'a-later'],
    );
    assert.deepEqual(
      s.snapshots.list('vm-b').map((x) => x.id),
      ['snap-000000000003'],
    );
    assert.deepEqual(s.snapshots.list('vm-none'), []);
    assert.deepEqual(s.snapshots.saving().sort(), ['snap-000000000003', 'snap-000000000004']);
  });

  test('the public record: every field of SnapshotRecord, none of the internal ones', () => {
    const full = s.snapshots.get('snap-000000000001')!;
    const rec = publicSnapshot(full);
    assert.deepEqual(SnapshotRecord.parse(rec), rec, 'a strict SnapshotRecord');
    for (const k of ['imageKey', 'generation', 'saved', 'sha256', 'files', 'ram'])
      assert.ok(!(k in rec), `${k} stays inside`);
    const text = JSON.stringify(rec);
    for (const h of Object.values(hashes)) assert.ok(!text.includes(h), 'no sha256 anywhere');
    assert.ok(!text.includes('ram.bin'), 'no file names');
    assert.equal(rec.bytes, 4096 + 8192);
    assert.equal(full.imageKey, 'key-1', 'publicSnapshot left its argument whole');
    s.snapshots.insert(snap('snap-000000000005', 'anon', 'vm-a', { createdBy: null }), T1);
    const anon = publicSnapshot(s.snapshots.get('snap-000000000005')!);
    assert.ok(!('createdBy' in anon), 'no createdBy key when nobody is named');
    SnapshotRecord.parse(anon);
  });

  test('owner label: taken from the acting scope, forgotten with the row', () => {
    scoped('a', () => s.snapshots.insert(snap('snap-00000000000a', 'scoped-a'), T1));
    assert.equal(s.owners.get('snapshot', 'snap-00000000000a'), 'a');
    assert.equal(s.owners.get('snapshot', 'snap-000000000001'), null, 'unscoped: no label');
    assert.equal(s.snapshots.delete('snap-00000000000a'), true);
    assert.equal(s.snapshots.get('snap-00000000000a'), undefined);
    assert.equal(s.owners.get('snapshot', 'snap-00000000000a'), null, 'label forgotten');
    const left = s.db
      .prepare(`SELECT COUNT(*) AS n FROM owners WHERE id = 'snap-00000000000a'`)
      .get() as { n: number };
    assert.equal(left.n, 0);
    assert.equal(s.snapshots.delete('snap-00000000000a'), false, 'gone already');
    assert.ok(!s.snapshots.nameTaken('scoped-a'), 'its name is free again');
  });
});

describe("VMs' restore facts", () => {
  let s: Store;
  before(() => {
    s = open();
    addStoreVm(s, 'vm-f');
    addStoreVm(s, 'vm-s');
  });
  after(() => s.close());

  const info = (snapshot: string, generation: number) => ({
    snapshot,
    generation,
    spawnToRunningMs: 12,
  });

  test('a fresh VM: generation 0, nothing pending, no restore fields in its record', () => {
    assert.deepEqual(s.vms.restoreState('vm-f'), { generation: 0, pending: null });
    assert.equal(s.vms.restoreState('vm-nope'), undefined);
    const rec = s.vms.get('vm-f')!;
    assert.ok(!('restoredFrom' in rec) && !('restore' in rec));
  });

  test('markFork: the snapshot it was made from, pending until its first start', () => {
    s.vms.markFork('vm-f', 'snap-000000000001', T1);
    assert.deepEqual(s.vms.restoreState('vm-f'), {
      generation: 0,
      pending: { from: 'snapshot', snapshot: 'snap-000000000001' },
    });
    const rec = s.vms.get('vm-f')!;
    assert.equal(rec.restoredFrom, 'snap-000000000001');
    assert.equal(rec.updatedAt, T1);
    assert.equal(s.vms.find('vm-f')?.restoredFrom, 'snap-000000000001');
    assert.equal(s.vms.list().find((v) => v.id === 'vm-f')?.restoredFrom, 'snap-000000000001');
  });

  test('setRestored: the new generation and what the restore did; nothing pending', () => {
    s.vms.setRestored('vm-f', 4, info('snap-000000000001', 4), T1);
    assert.deepEqual(s.vms.restoreState('vm-f'), { generation: 4, pending: null });
    const rec = s.vms.get('vm-f')!;
    assert.deepEqual(rec.restore, info('snap-000000000001', 4));
    assert.equal(rec.restoredFrom, 'snap-000000000001', 'a fork stays one');
    VmRecord.parse(rec);
  });

  test("setRestoreInfo: the agent's part, generation unchanged", () => {
    const more = { ...info('snap-000000000001', 4), clockStepMs: 3.5, entropyBytes: 128 };
    s.vms.setRestoreInfo('vm-f', more, T1);
    assert.deepEqual(s.vms.get('vm-f')!.restore, more);
    assert.equal(s.vms.restoreState('vm-f')!.generation, 4);
  });

  test('setStarted: a new start clears the last restore, not the fork or its generation', () => {
    s.vms.setStarted('vm-f', T1);
    const rec = s.vms.get('vm-f')!;
    assert.equal(rec.restore, undefined);
    assert.equal(rec.startedAt, T1);
    assert.equal(rec.restoredFrom, 'snap-000000000001');
    assert.deepEqual(s.vms.restoreState('vm-f'), { generation: 4, pending: null });
  });

  test("setPendingRestore: a suspend to resume from (its saved state and files' sha256), then dropped", () => {
    const pending = { from: 'suspend' as const, saved: saved(2048 + 4096, 4096), hashes };
    s.vms.setPendingRestore('vm-s', pending, T1);
    assert.deepEqual(s.vms.restoreState('vm-s'), { generation: 0, pending });
    // Through the stream: state.bin alone.
    const stream = {
      from: 'suspend' as const,
      saved: saved(2048),
      hashes: { 'state.bin': hashes['state.bin'] },
    };
    assert.deepEqual(stream.saved.files, { 'state.bin': 2048 });
    s.vms.setPendingRestore('vm-s', stream, T1);
    assert.deepEqual(s.vms.restoreState('vm-s'), { generation: 0, pending: stream });
    assert.equal(s.vms.get('vm-s')!.restoredFrom, undefined, 'a suspend is not a fork');
    s.vms.setPendingRestore('vm-s', null, T1);
    assert.deepEqual(s.vms.restoreState('vm-s'), { generation: 0, pending: null });
  });
});
