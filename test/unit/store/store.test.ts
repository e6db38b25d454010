import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { createStore, SCHEMA_VERSION } from '../../../host/store/index.js';
import { MIGRATIONS } from '../../../host/store/migrations.js';
import { silentLogger } from '../../../host/log.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await removeDir(d);
});
async function dbFile(): Promise<string> {
  const d = await makeTempDir('mvirt-store-');
  dirs.push(d);
  return path.join(d, 'mvirt.db');
}
const log = silentLogger();
const vm = (id: string, name = id) => ({
  id,
  name,
  vcpus: 1,
  memoryMiB: 256,
  kind: 'service' as const,
  image: 'default',
  backend: 'qemu',
  network: { mode: 'none' as const },
  metadata: {},
});

test('pragmas: WAL, synchronous=FULL, foreign keys and a 4 MiB page cache on every open', async () => {
  const file = await dbFile();
  for (let i = 0; i < 2; i++) {
    const s = createStore(file, log);
    assert.equal(s.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(s.db.pragma('synchronous', { simple: true }), 2, 'FULL');
    assert.equal(s.db.pragma('foreign_keys', { simple: true }), 1);
    assert.ok((s.db.pragma('busy_timeout', { simple: true }) as number) > 0);
    assert.equal(s.db.pragma('cache_size', { simple: true }), -4096, 'KiB, not 16 MB');
    s.close();
  }
  // A plain better-sqlite3 open gets NORMAL(1) in WAL: the reason we set it each time.
  const raw = new Database(file);
  assert.notEqual(raw.pragma('synchronous', { simple: true }), 2);
  assert.equal(raw.pragma('cache_size', { simple: true }), -16000, "better-sqlite3's own");
  raw.close();
});

test('migrations are versioned and idempotent', async () => {
  const file = await dbFile();
  const s = createStore(file, log);
  assert.equal(s.db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  assert.equal(SCHEMA_VERSION, MIGRATIONS.length);
  s.vms.insert(vm('vm-1'));
  s.close();
  const again = createStore(file, log);
  assert.equal(again.db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  assert.equal(again.vms.list().length, 1);
  again.close();
  // A database from a newer mvirtd is refused, not silently used.
  const raw = new Database(file);
  raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  raw.close();
  assert.throws(() => createStore(file, log), /newer than this mvirtd/);
});

test('vms: insert, find by id or name, compare-and-set state, runtime join, cascade', async () => {
  const s = createStore(await dbFile(), log);
  s.vms.insert(vm('vm-a', 'alpha'));
  assert.equal(s.vms.find('alpha')?.id, 'vm-a');
  assert.equal(s.vms.find('vm-a')?.name, 'alpha');
  assert.ok(s.vms.nameTaken('alpha') && s.vms.nameTaken('vm-a'));
  assert.throws(() => s.vms.insert(vm('vm-b', 'alpha')), /UNIQUE/);
  const now = new Date().toISOString();
  assert.ok(s.vms.setState('vm-a', 'stopped', 'starting', 'go', now));
  assert.ok(!s.vms.setState('vm-a', 'stopped', 'ready', null, now), 'stale from-state');
  s.vms.putRuntime(
    'vm-a',
    { backend: 'qemu', pid: 42, startTime: 7, accel: 'tcg', sockets: { qmp: 'q' } },
    now,
  );
  const rec = s.vms.get('vm-a')!;
  assert.equal(rec.pid, 42);
  assert.equal(rec.accel, 'tcg');
  assert.equal(rec.stateReason, 'go');
  assert.deepEqual(s.vms.allocated(), { vms: 1, vcpus: 1, memoryMiB: 256 });
  assert.deepEqual(s.vms.countByState(), { starting: 1 });
  assert.equal(s.vms.delete('vm-a'), true);
  assert.equal(s.vms.allRuntime().length, 0, 'runtime row cascaded');
  s.close();
});

test('events: query by object, level and time; retention', async () => {
  const s = createStore(await dbFile(), log);
  const base = Date.parse('2024-01-01T00:00:00Z');
  for (let i = 0; i < 10; i++) {
    s.events.append({
      at: base + i * 1000,
      level: i % 2 ? 'audit' : 'info',
      component: 'vm',
      message: `e${i}`,
      objects: i < 5 ? ['vm-a', 'image:default'] : ['vm-b'],
      data: { i },
    });
  }
  const a = s.events.query({ objectId: 'vm-a' });
  assert.deepEqual(
    a.map((e) => e.message),
    ['e0', 'e1', 'e2', 'e3', 'e4'],
  );
  assert.deepEqual(a[0]!.objects.sort(), ['image:default', 'vm-a']);
  assert.deepEqual(a[0]!.data, { i: 0 });
  assert.equal(s.events.query({ objectId: 'image:default' }).length, 5);
  assert.deepEqual(
    s.events.query({ objectId: 'vm-b', level: 'audit' }).map((e) => e.message),
    ['e5', 'e7', 'e9'],
  );
  assert.deepEqual(
    s.events.query({ since: base + 3000, until: base + 6000 }).map((e) => e.message),
    ['e3', 'e4', 'e5'],
  );
  assert.deepEqual(
    s.events.query({ limit: 2 }).map((e) => e.message),
    ['e8', 'e9'],
    'latest',
  );
  assert.deepEqual(
    s.events.query({ since: base, limit: 2 }).map((e) => e.message),
    ['e0', 'e1'],
  );
  // Retention per class: of the rest, older than e2 goes, then at most 3
  // rows; of the audit records, older than e4 goes, then at most 2 rows.
  s.events.prune({ before: base + 2000, maxRows: 3, auditBefore: base + 4000, auditMaxRows: 2 });
  assert.deepEqual(
    s.events.query({}).map((e) => e.message),
    ['e4', 'e6', 'e7', 'e8', 'e9'],
  );
  assert.deepEqual(s.events.count(), { audit: 2, other: 3 });
  assert.equal(s.events.query({ objectId: 'vm-a' }).length, 1, 'links cascaded');
  const orphans = s.db.prepare('SELECT COUNT(*) AS n FROM event_objects').get() as { n: number };
  assert.equal(orphans.n, 6);
  s.close();
});

test('vm.list over 10,000 rows stays close to the raw query', async () => {
  const s = createStore(await dbFile(), log);
  s.db.transaction(() => {
    for (let i = 0; i < 10_000; i++) s.vms.insert(vm(`vm-${i}`, `n-${i}`));
  })();
  const raw = s.db.prepare('SELECT * FROM vms');
  const time = (fn: () => unknown): number => {
    fn();
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) fn();
    return (performance.now() - t0) / 5;
  };
  const tRaw = time(() => raw.all());
  const tList = time(() => s.vms.list());
  assert.equal(s.vms.list().length, 10_000);
  assert.ok(tList / tRaw < 5, `list ${tList.toFixed(1)} ms vs raw ${tRaw.toFixed(1)} ms`);
  s.close();
});
