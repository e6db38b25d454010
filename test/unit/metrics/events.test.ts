/**
 * The event log over RPC and live: every state change and operator action
 * names the objects it touched; events.query filters by object (a VM's name
 * means its id), level and time, and pages; `<root>/events` carries the same
 * records live; retention keeps the store bounded.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { EventRecord, VmRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { removeDir } from '../../../harness/paths.js';
import { rpcClient } from '../../../harness/client.js';
import { startTestDaemon } from '../../../harness/daemon.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
let a: VmRecord;
let b: VmRecord;
let jobId: string;
let mid: number;
before(async () => {
  j = await startJobDaemon();
  a = await j.serviceVm('ev-a');
  jobId = (await j.run({ vm: 'ev-a', argv: ['true'], wait: true })).jobId;
  mid = Date.now();
  // Events are timestamped in milliseconds: make "after mid" unambiguous.
  while (Date.now() === mid) await new Promise((r) => setImmediate(r));
  b = result(await j.c.call('vm.create', { name: 'ev-b' }));
  result(await j.c.call('vm.stop', { vm: 'ev-a' }));
});
after(cleanupAll);

const query = async (params: Record<string, unknown>): Promise<EventRecord[]> =>
  result(await j.c.call('events.query', params)).events;

test('by object: a VM by name or id, a job; every event names the objects it touched', async () => {
  const byName = await query({ objectId: 'ev-a', limit: 1000 });
  assert.deepEqual(byName, await query({ objectId: a.id, limit: 1000 }), 'a name means the id');
  assert.ok(byName.every((e) => e.objects.includes(a.id)));
  const messages = byName.map((e) => e.message);
  for (const m of [
    'ev-a: created',
    'ev-a: stopped → starting',
    'ev-a: starting → ready',
    'ev-a: stop',
    'ev-a: stopping → stopped',
  ])
    assert.ok(
      messages.some((x) => x.startsWith(m)),
      `${m} in ${JSON.stringify(messages)}`,
    );
  assert.ok(!byName.some((e) => e.objects.includes(b.id)), "no event of ev-b's");
  const ofJob = await query({ objectId: jobId });
  assert.ok(ofJob.length >= 3, 'queued, running, succeeded');
  assert.ok(ofJob.every((e) => e.objects.includes(jobId)));
  assert.ok(
    ofJob.some((e) => e.objects.includes(a.id)),
    'job events also name the VM',
  );
  assert.deepEqual(await query({ objectId: 'vm-000000000000' }), []);
});

test('by level', async () => {
  const info = await query({ level: 'info', limit: 1000 });
  assert.ok(info.length >= 1 && info.every((e) => e.level === 'info'), 'agent hellos are info');
  const audit = await query({ level: 'audit', limit: 1000 });
  assert.ok(audit.length > info.length && audit.every((e) => e.level === 'audit'));
  assert.deepEqual(await query({ level: 'error' }), []);
  assert.equal(errorOf(await j.c.send('events.query', { level: 'loud' })).code, 'INVALID_PARAMS');
});

test('by time (epoch ms or ISO) and paging with limit', async () => {
  const later = await query({ since: mid, limit: 1000 });
  assert.ok(later.length >= 2);
  assert.ok(later.every((e) => Date.parse(e.at) >= mid));
  assert.ok(later.some((e) => e.message === 'ev-b: created'));
  const earlier = await query({ until: new Date(mid).toISOString(), limit: 1000 });
  assert.ok(earlier.every((e) => Date.parse(e.at) < mid));
  assert.ok(!earlier.some((e) => e.message === 'ev-b: created'));
  const all = await query({ limit: 10_000 });
  assert.equal(later.length + earlier.length, all.length, 'since/until split the log');
  // Without since: the most recent, oldest first; with since: the first after it.
  const last2 = await query({ limit: 2 });
  assert.deepEqual(
    last2.map((e) => e.id),
    all.slice(-2).map((e) => e.id),
  );
  const first2 = await query({ since: 0, limit: 2 });
  assert.deepEqual(
    first2.map((e) => e.id),
    all.slice(0, 2).map((e) => e.id),
  );
  assert.equal(
    errorOf(await j.c.call('events.query', { since: 'yesterday' })).code,
    'INVALID_PARAMS',
  );
});

test('live on <root>/events: an operator action arrives with its objects, as stored', async () => {
  const w = await j.c.watch(`${j.d.root}/events`, (_t, p) =>
    (JSON.parse(p.toString()) as EventRecord).message.startsWith('ev-b: deleted'),
  );
  result(await j.c.call('vm.delete', { vm: 'ev-b' }));
  const live = JSON.parse((await w.message).toString()) as EventRecord;
  assert.equal(live.level, 'audit');
  assert.ok(live.objects.includes(b.id) && live.objects.includes('image:default'));
  const stored = (await query({ objectId: b.id })).at(-1)!;
  // The store lists an event's objects in its own order.
  const sorted = (e: EventRecord): EventRecord => ({ ...e, objects: [...e.objects].sort() });
  assert.deepEqual(sorted(stored), sorted(live));
});

test('retention: --audit-max-rows bounds the audit records, newest kept', async () => {
  const hv = createFakeHypervisor();
  const d = await startTestDaemon({
    hypervisors: [hv],
    args: ['--events-max-rows', '100', '--audit-max-rows', '100'],
  });
  const c = await rpcClient(d);
  try {
    for (let i = 0; i < 80; i++) {
      result(await c.call('vm.create', { name: `r-${i}` }));
      result(await c.call('vm.delete', { vm: `r-${i}` }));
    }
    const evs = await c.call('events.query', { limit: 10_000 });
    // Audit records (operator actions) have their own bound; see test/unit/store/audit-retention.test.ts.
    const kept = result(evs).events.filter((e) => e.level === 'audit');
    assert.ok(kept.length >= 100 && kept.length <= 110, `${kept.length} events kept`);
    assert.equal(kept.at(-1)!.message, 'r-79: deleted', 'the newest is kept');
    assert.ok(!kept.some((e) => e.message === 'r-0: created'), 'the oldest went');
  } finally {
    await c.close();
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
  }
});
