/**
 * Dry runs of job.run, job.cancel, pool.set and pool.delete through the real
 * daemon and client (`client.plan`): each plan describes what the real call
 * then does, and the dry run itself changes nothing — the SQLite database and
 * its WAL byte for byte, the data dir's files (names, sizes, mtimes), the
 * processes, the events, and nothing published. A dry run the real call would
 * refuse is refused with the same code.
 *
 * The daemon is kept quiet (status and telemetry hourly; before each
 * comparison, the status publish of the last VM change and pool warm-ups
 * awaited and the metric roll-ups flushed) so that whatever changes is the
 * call under test.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient, type MvirtClient } from '../../../protocol/client.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { DryRunPlan, MutatingMethod, ParamsOf, VmRecord } from '../../../protocol/rpc.js';
import { snapshot, watchPublishes, type PublishWatch } from '../../support/dry-run.js';
import { cleanupAll, result, startJobDaemon, WAIT_MS, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
let c: MvirtClient;
let w: PublishWatch;
let web: VmRecord;

const QUIET = ['--status-interval-ms', '3600000', '--telemetry-interval-ms', '3600000'];

/** The VMs of pool `name` as last published. */
const members = (name: string): VmRecord[] =>
  j.rec.liveVms().filter((v) => v.metadata['mvirt.pool'] === name);

/** Resolve once pool `name` has `n` ready (idle) VMs, as it publishes. */
const readyIn = (name: string, n: number): Promise<true> =>
  j.rec.until(
    () => (j.rec.poolStates(name).at(-1)?.vms.ready === n ? true : undefined),
    `pool ${name}: ${n} ready`,
  );

const deleted = (vmId: string): Promise<true> =>
  j.rec.until(() => (j.rec.vmStates(vmId).at(-1) === null ? true : undefined), `${vmId} deleted`);

async function state(): Promise<{ s: ReturnType<typeof snapshot>; events: unknown }> {
  // events.query also serves as a barrier: what the daemon published before
  // it answers has reached the in-process watcher.
  const events = await c.call('events.query', { limit: 10_000 });
  return { s: snapshot(j.dataDir), events };
}

/** Run `fn` (a dry run) and assert that it changed nothing; its result or error. */
async function unchanged<T>(what: string, fn: () => Promise<T>): Promise<T> {
  // Nothing under way: a VM change's status publish (and its host sample), a
  // pool VM's warm-up; then the roll-ups flushed (they reach SQLite on a timer).
  await w.quiet(
    j.rec
      .liveVms()
      .filter((v) => v.metadata['mvirt.pool'] !== undefined)
      .map((v) => v.id),
  );
  await c.call('metrics.query', { from: Date.now() - 60_000 });
  const b = await state();
  const mark = w.seen.length;
  let out: { ok: true; v: T } | { ok: false; err: unknown };
  try {
    out = { ok: true, v: await fn() };
  } catch (err) {
    out = { ok: false, err };
  }
  const a = await state();
  assert.deepEqual(a.s.db, b.s.db, `${what}: database and WAL byte for byte the same`);
  assert.deepEqual(a.s.files, b.s.files, `${what}: data dir the same`);
  assert.deepEqual(a.s.procs, b.s.procs, `${what}: processes the same`);
  assert.deepEqual(a.events, b.events, `${what}: no event added`);
  // What guests publish (their agents' `up` topics) is theirs, not the call's.
  const published = w.seen.slice(mark).filter((s) => !/\/agent\/[^/]+\/up\//.test(s));
  assert.deepEqual(published, [], `${what}: nothing published`);
  if (!out.ok) throw out.err;
  return out.v;
}

const plan = <M extends MutatingMethod>(m: M, p: ParamsOf<M>): Promise<DryRunPlan> =>
  unchanged(`${m} dry run`, () => c.plan(m, p));

/** The code a call rejects with (fails when it does not). */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof MvirtError, `an MvirtError, got ${String(err)}`);
    return err.code;
  }
  return assert.fail('expected a refusal');
}

before(async () => {
  j = await startJobDaemon({ args: QUIET });
  w = await watchPublishes(j.d, WAIT_MS);
  web = await j.serviceVm('web');
  result(await j.c.call('vm.create', { name: 'cold' }));
  result(await j.c.call('pool.set', { name: 'warm', min: 1, max: 2 }));
  await readyIn('warm', 1);
  c = await createClient({ url: j.d.url, hostId: 'test-host', timeoutMs: WAIT_MS });
});
after(async () => {
  await w?.stop();
  await c?.close();
  await cleanupAll();
});

test("refusals: a dry run is refused with the real call's code, and changes nothing", async () => {
  const [member] = members('warm');
  assert.ok(member, 'a pool VM (ephemeral) to refuse');
  const cases: [string, () => Promise<unknown>, () => Promise<unknown>, string][] = [
    [
      'job.run unknown VM',
      () => c.plan('job.run', { vm: 'nope', argv: ['true'] }),
      () => c.call('job.run', { vm: 'nope', argv: ['true'] }),
      'VM_NOT_FOUND',
    ],
    [
      'job.run stopped VM',
      () => c.plan('job.run', { vm: 'cold', argv: ['true'] }),
      () => c.call('job.run', { vm: 'cold', argv: ['true'] }),
      'VM_BAD_STATE',
    ],
    [
      'job.run unknown pool',
      () => c.plan('job.run', { pool: 'nope', argv: ['true'] }),
      () => c.call('job.run', { pool: 'nope', argv: ['true'] }),
      'POOL_NOT_FOUND',
    ],
    [
      'job.run unknown image',
      () => c.plan('job.run', { image: 'nope', argv: ['true'] }),
      () => c.call('job.run', { image: 'nope', argv: ['true'] }),
      'IMAGE_NOT_FOUND',
    ],
    [
      'job.cancel unknown job',
      () => c.plan('job.cancel', { jobId: 'job-0123456789abcdef' }),
      () => c.call('job.cancel', { jobId: 'job-0123456789abcdef' }),
      'JOB_NOT_FOUND',
    ],
    [
      'pool.set max < min',
      () => c.plan('pool.set', { name: 'bad', min: 3, max: 2 }),
      () => c.call('pool.set', { name: 'bad', min: 3, max: 2 }),
      'INVALID_PARAMS',
    ],
    [
      'pool.set unknown image',
      () => c.plan('pool.set', { name: 'bad', min: 0, image: 'nope' }),
      () => c.call('pool.set', { name: 'bad', min: 0, image: 'nope' }),
      'IMAGE_NOT_FOUND',
    ],
    [
      'pool.delete unknown pool',
      () => c.plan('pool.delete', { name: 'nope' }),
      () => c.call('pool.delete', { name: 'nope' }),
      'POOL_NOT_FOUND',
    ],
  ];
  const onMember = { vm: member.name, argv: ['true'] };
  cases.push([
    'job.run ephemeral VM',
    () => c.plan('job.run', onMember),
    () => c.call('job.run', onMember),
    'VM_BAD_STATE',
  ]);
  for (const [what, dry, real, code] of cases) {
    assert.equal(await codeOf(unchanged(what, dry)), code, `${what}: dry run`);
    assert.equal(await codeOf(real()), code, `${what}: real call`);
  }
});

test('job.run on a service VM: the plan names the VM and the exec, never env values or stdin', async () => {
  const params = {
    vm: 'web',
    argv: ['sh', '-c', 'cat; printf %s "$SECRET"'],
    env: { SECRET: 'hunter2-value' },
    stdin: 'stdin-value-xyz',
    cwd: '/tmp',
  };
  const p = await plan('job.run', params);
  assert.equal(p.method, 'job.run');
  assert.deepEqual(p.admission, ['target: VM web (service, ready)']);
  assert.deepEqual(p.steps, ['record job (queued)', 'place on VM web', 'send exec to the agent']);
  assert.deepEqual(p.commands, [
    {
      kind: 'agent',
      type: 'exec',
      body: {
        jobId: '(assigned by job.run)',
        argv: params.argv,
        envKeys: ['SECRET'],
        cwd: '/tmp',
        stdinBytes: 15,
      },
    },
  ]);
  assert.deepEqual(p.files, { create: [], remove: [] });
  assert.deepEqual(p.changes, ['job: queued on VM web', 'event: audit "job …: queued"']);
  const text = JSON.stringify(p);
  assert.ok(!text.includes('hunter2') && !text.includes('stdin-value'), 'no env value or stdin');

  // The real call does what the plan said, and that does change the files.
  const before = snapshot(j.dataDir);
  const done = await c.call('job.run', { ...params, wait: true });
  assert.equal(done.state, 'succeeded');
  assert.equal(done.vm, web.id);
  assert.deepEqual(done.target, { kind: 'vm', vm: web.id });
  assert.equal(done.stdout, 'stdin-value-xyzhunter2-value');
  assert.notDeepEqual(snapshot(j.dataDir).db, before.db, 'the real call wrote');
});

test('job.run on a pool: the plan takes its ready VM, which the real job then uses and destroys', async () => {
  const [idle] = members('warm');
  assert.ok(idle && idle.state === 'ready');
  const p = await plan('job.run', { pool: 'warm', argv: ['true'] });
  assert.deepEqual(p.admission, ['target: pool warm (image default, max 2)']);
  assert.deepEqual(p.steps, [
    'record job (queued)',
    'take a ready VM of pool warm (1 ready)',
    'send exec to the agent',
    'kill and delete its VM once the job ends',
  ]);
  assert.deepEqual(p.changes, ['job: queued for pool warm', 'event: audit "job …: queued"']);

  const done = await c.call('job.run', { pool: 'warm', argv: ['true'], wait: true });
  assert.equal(done.state, 'succeeded');
  assert.equal(done.vm, idle.id, 'the ready VM the plan spoke of');
  await deleted(idle.id);
  await readyIn('warm', 1);
});

test('job.run without a target: the default image, its check and the capacity it fits in', async () => {
  const p = await plan('job.run', { argv: ['true'] });
  assert.deepEqual(p.admission.slice(0, 2), [
    'target: none given, the default image default',
    'image default found',
  ]);
  assert.match(p.admission[2] ?? '', /^capacity: \d+ vCPUs? \/ \d+ MiB fit now \(\d+ VMs, /);
  assert.match(p.steps[1] ?? '', /^boot an ephemeral VM job-… from image default /);
  assert.deepEqual(p.changes[0], 'job: queued for image default (an ephemeral VM of its own)');

  const done = await c.call('job.run', { argv: ['true'], wait: true });
  assert.equal(done.state, 'succeeded');
  assert.deepEqual(done.target, { kind: 'image', image: 'default' });
  assert.notEqual(done.vm, null);
  await deleted(done.vm!);
});

test('job.cancel: a running job is signalled; a finished one is left as it is', async () => {
  const job = await c.call('job.run', { vm: 'web', argv: ['sleep', '1000'] });
  await j.rec.job(job.jobId, ['running']);
  const p = await plan('job.cancel', { jobId: job.jobId });
  assert.deepEqual(p.admission, [`job ${job.jobId} found (running)`, 'its exec went out']);
  assert.deepEqual(p.commands, [
    { kind: 'agent', type: 'signal', body: { jobId: job.jobId, signal: 'SIGTERM' } },
  ]);
  assert.ok(p.changes.includes(`job ${job.jobId}: running → cancelled`));
  const cancelled = await c.call('job.cancel', { jobId: job.jobId });
  assert.equal(cancelled.state, 'cancelled');

  // Cancelling a finished job changes nothing, real or dry: the plan is empty.
  const again = await plan('job.cancel', { jobId: job.jobId });
  assert.deepEqual(again.admission, [
    `job ${job.jobId} found (cancelled)`,
    'finished: nothing to cancel',
  ]);
  assert.deepEqual([again.steps, again.commands, again.changes], [[], [], []]);
  const same = await unchanged('job.cancel of a finished job', () =>
    c.call('job.cancel', { jobId: job.jobId }),
  );
  assert.equal(same.finishedAt, cancelled.finishedAt);
});

test('pool.set: a new pool would boot min VMs; the real one does', async () => {
  const p = await plan('pool.set', { name: 'fresh', min: 2, max: 3 });
  assert.deepEqual(p.admission.slice(0, 3), [
    'pool fresh is new',
    'min 2 ≤ max 3',
    'image default found',
  ]);
  assert.match(p.admission[3] ?? '', /^capacity: /);
  assert.deepEqual(p.changes, [
    'pool fresh: created (min 2, max 3) — 2 VMs would boot',
    'event: audit "pool fresh: created"',
  ]);
  const warmups = p.commands.filter(
    (x) => x.kind === 'agent' && x.type === 'exec' && x.body?.argv?.toString() === '/bin/true',
  );
  assert.equal(warmups.length, 2);

  const set = await c.call('pool.set', { name: 'fresh', min: 2, max: 3 });
  assert.equal(set.max, 3);
  await readyIn('fresh', 2);
  assert.equal(members('fresh').length, 2);
});

test('pool.set on an existing pool: the update, the VMs that would boot or go', async () => {
  const grow = await plan('pool.set', { name: 'warm', min: 2, max: 3 });
  assert.match(
    grow.admission[0]!,
    /^pool warm exists \(image default, min 1, max 2, \d+ vCPUs? \/ \d+ MiB\)$/,
  );
  assert.equal(grow.changes[0], 'pool warm: updated (min 1 → 2, max 2 → 3) — 1 VM would boot');
  await c.call('pool.set', { name: 'warm', min: 2, max: 3 });
  await readyIn('warm', 2);

  const shrink = await plan('pool.set', { name: 'warm', min: 0 });
  const going = members('warm').map((v) => v.name);
  assert.equal(going.length, 2);
  const removed = shrink.steps
    .map((s) => s.match(/^kill and delete VM (\S+) \(the pool shrank\)$/)?.[1])
    .filter((n) => n !== undefined);
  assert.deepEqual([...removed].sort(), [...going].sort());
  assert.match(shrink.changes[0]!, /^pool warm: updated \(min 2 → 0\) — VM .+ killed and deleted$/);
  const ids = members('warm').map((v) => v.id);
  await c.call('pool.set', { name: 'warm', min: 0 });
  for (const id of ids) await deleted(id);
});

test('pool.delete: the plan names the VMs the real delete then removes', async () => {
  const vms = members('fresh');
  assert.equal(vms.length, 2);
  const p = await plan('pool.delete', { name: 'fresh' });
  assert.deepEqual(p.admission, ['pool fresh found (image default, min 2, max 3)']);
  const names = vms.map((v) => v.name);
  assert.ok(
    p.changes[0] === `pool fresh: deleted; VMs ${names.join(', ')} killed and deleted` ||
      p.changes[0] ===
        `pool fresh: deleted; VMs ${[...names].reverse().join(', ')} killed and deleted`,
    p.changes[0],
  );
  await c.call('pool.delete', { name: 'fresh' });
  for (const v of vms) await deleted(v.id);
});
