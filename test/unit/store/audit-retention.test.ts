/**
 * Audit is never evicted by guest noise (issue 12): audit records and other
 * events have their own bounds in a real SQLite file, and what a guest causes
 * reaches the log through a per-VM gate that writes the excess as one count.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import { createEventLog } from '../../../host/events/log.js';
import { createGuestGate } from '../../../host/events/guest-gate.js';
import type { AppendEvent } from '../../../host/events/log.js';
import { silentLogger } from '../../../host/log.js';
import { createStore } from '../../../host/store/index.js';
import { topics } from '../../../protocol/topics.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await removeDir(d);
});
const log = silentLogger();
const bus = { publish: () => Promise.resolve() } as never;

test('a flood of guest events fills its own bound; every audit record stays', async () => {
  const dir = await makeTempDir('mvirt-audit-');
  dirs.push(dir);
  const store = createStore(path.join(dir, 'mvirt.db'), log);
  const events = createEventLog({
    repo: store.events,
    bus,
    topics: topics('mvirt/h'),
    log,
    retention: { days: 30, maxRows: 100 },
  });
  const audits: number[] = [];
  // 3,000 guest-caused rows (as if no gate held them) around 60 audit records.
  for (let i = 0; i < 3000; i++) {
    if (i % 50 === 0)
      audits.push(
        events.append({ level: 'audit', component: 'vm', message: `op ${i}`, objects: ['vm-1'] })
          .id,
      );
    events.append({ level: 'info', component: 'agent', message: 'agent hello', objects: ['vm-2'] });
  }
  events.prune();
  const kept = store.events.query({ level: 'audit', limit: 10_000 }).map((e) => e.id);
  assert.deepEqual(kept, audits, 'every audit record is present');
  const n = store.events.count();
  assert.equal(n.audit, audits.length);
  assert.equal(n.other, 100, 'the other events are at their row bound');
  events.close();
  store.close();
});

test('the audit bound and age are their own, and longer than the rest', async () => {
  const dir = await makeTempDir('mvirt-audit-');
  dirs.push(dir);
  const store = createStore(path.join(dir, 'mvirt.db'), log);
  const now = Date.now();
  const day = 86400_000;
  for (const [at, level] of [
    [now - 40 * day, 'audit'],
    [now - 40 * day, 'info'],
    [now - 400 * day, 'audit'],
    [now, 'warn'],
  ] as const)
    store.events.append({ at, level, component: 'x', message: `${level}@${at}`, objects: [] });
  const events = createEventLog({
    repo: store.events,
    bus,
    topics: topics('mvirt/h'),
    log,
    retention: { days: 30, maxRows: 100 },
  });
  events.prune();
  assert.deepEqual(
    store.events.query({}).map((e) => `${e.level}@${Date.parse(e.at)}`),
    [`audit@${now - 40 * day}`, `warn@${now}`],
    'a 40-day-old audit record outlives the 30-day events; a 400-day-old one goes',
  );
  events.close();
  store.close();
});

test('guest gate: a burst, then one per refill; the rest is one count per window', () => {
  let t = 0;
  const written: AppendEvent[] = [];
  const gate = createGuestGate({
    append: (e) => written.push(e),
    options: { burst: 3, refillMs: 1000, windowMs: 60_000 },
    now: () => t,
  });
  const e = (i: number): AppendEvent => ({
    level: 'info',
    component: 'agent',
    message: `hello ${i}`,
    objects: ['vm-1'],
  });
  let passed = 0;
  for (let i = 0; i < 1234; i++)
    if (gate.append('vm-1', 'hello events not recorded', e(i))) passed++;
  for (let i = 0; i < 1234; i++) gate.refuse('vm-1', 'hellos refused');
  assert.equal(passed, 3, 'the burst');
  t = 2500; // two tokens back
  assert.equal(gate.append('vm-1', 'hello events not recorded', e(0)), true);
  assert.equal(gate.append('vm-2', 'hello events not recorded', e(0)), true, 'per VM');
  t = 60_000;
  gate.flush();
  const summaries = written.filter((w) => w.level === 'warn').map((w) => w.message);
  assert.deepEqual(summaries.sort(), [
    '1,231 hello events not recorded in the last minute',
    '1,234 hellos refused in the last minute',
  ]);
  gate.flush();
  assert.equal(written.filter((w) => w.level === 'warn').length, 2, 'counts start afresh');
  gate.close();
});
