/**
 * job.run on an image: an ephemeral VM is booted for the job and destroyed
 * afterwards; at capacity (--max-vms 1) further jobs wait in a FIFO queue
 * with their position and run once the VM before them is gone.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { JobRecord, VmRecord } from '../../../protocol/rpc.js';
import { procStartTime } from '../../../host/hypervisors/proc.js';
import {
  cleanupAll,
  errorOf,
  gated,
  open,
  result,
  startJobDaemon,
  TERMINAL,
  until,
  type JobDaemon,
} from '../../support/jobs.js';

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon({ args: ['--max-vms', '1'] });
});
after(cleanupAll);

/** Resolves once the VM's retained state was cleared (vm.delete publishes an empty one). */
const deleted = (vmId: string): Promise<true> =>
  j.rec.until(() => (j.rec.vmStates(vmId).at(-1) === null ? true : undefined), `${vmId} deleted`);

const pidOf = (vmId: string): number | undefined =>
  j.rec.vmStates(vmId).find((v) => v?.pid !== undefined)?.pid;

test('job.run on an image boots an ephemeral VM that is gone afterwards', async () => {
  const r = result(
    await j.c.call(
      'job.run',
      { image: 'default', argv: ['sh', '-c', 'echo in $0', 'ephemeral'], wait: true },
      { timeoutMs: 20_000 },
    ),
  );
  assert.equal(r.state, 'succeeded', r.reason);
  assert.equal(r.stdout, 'in ephemeral\n');
  assert.deepEqual(r.target, { kind: 'image', image: 'default' });
  const vmId = r.vm!;
  assert.match(vmId, /^vm-/);
  // It was an ephemeral VM made for this job, and it went through ready.
  const states = j.rec.vmStates(vmId).filter((v): v is VmRecord => v !== null);
  assert.equal(states[0]?.kind, 'ephemeral');
  assert.equal(states[0]?.metadata['mvirt.job'], r.jobId);
  assert.ok(states.some((v) => v.state === 'ready' || v.state === 'busy'));

  await deleted(vmId);
  const list = result(await j.c.call('vm.list'));
  assert.deepEqual(
    list.vms.map((v) => v.id),
    [],
    'no VM row left',
  );
  assert.equal(existsSync(path.join(j.dataDir, 'vm', vmId)), false, 'no VM folder left');
  const pid = pidOf(vmId);
  assert.ok(pid !== undefined);
  await until(() => procStartTime(pid) === null, 'the VM process is gone');
  // The job record outlives its VM.
  assert.equal(result(await j.c.call('job.get', { jobId: r.jobId })).vm, vmId);
});

test('at capacity a second image job is queued (position 1) and runs once the first VM is gone', async () => {
  const go = path.join(j.tmp, 'first-go');
  const first = await j.run({ image: 'default', argv: gated(go) });
  await j.rec.job(first.jobId, ['running']);
  const second = await j.run({ image: 'default', argv: ['echo', 'second'] });
  assert.equal(second.state, 'queued');
  assert.equal(second.queuePosition, 1);
  assert.equal(second.vm, null);
  const third = await j.run({ image: 'default', argv: ['echo', 'third'] });
  assert.equal(third.queuePosition, 2);
  // job.get and job.list agree.
  assert.equal(result(await j.c.call('job.get', { jobId: second.jobId })).queuePosition, 1);
  const queued = result(await j.c.call('job.list', { state: 'queued' }));
  assert.deepEqual(
    queued.jobs.map((x) => [x.jobId, x.queuePosition]).sort(),
    [
      [second.jobId, 1],
      [third.jobId, 2],
    ].sort(),
  );

  await open(go);
  const firstDone = await j.rec.job(first.jobId, TERMINAL);
  assert.equal(firstDone.state, 'succeeded');
  const secondRunning = await j.rec.job(second.jobId, ['running', ...TERMINAL]);
  assert.notEqual(secondRunning.vm, firstDone.vm, 'a VM of its own');
  // The first job's VM was out of the way before the second one booted (max 1 VM).
  const at = (topic: string, pred: (p: Buffer) => boolean): number =>
    j.rec.seen.findIndex((m) => m.topic === topic && pred(m.payload));
  const state = (p: Buffer): string | undefined =>
    p.length === 0 ? undefined : (JSON.parse(p.toString()) as { state: string }).state;
  const firstStopped = at(`${j.d.root}/vm/${firstDone.vm!}/state`, (p) => state(p) === 'stopped');
  const secondStarting = at(
    `${j.d.root}/vm/${secondRunning.vm!}/state`,
    (p) => state(p) === 'starting',
  );
  assert.ok(firstStopped >= 0 && secondStarting >= 0);
  assert.ok(firstStopped < secondStarting, 'the second VM booted after the first stopped');
  // The third moved up to position 1 while the second ran.
  await j.rec.until(
    () => (j.rec.jobStates(third.jobId).some((r) => r.queuePosition === 1) ? true : undefined),
    'third job at position 1',
  );
  const secondDone = await j.rec.job(second.jobId, TERMINAL);
  assert.equal(secondDone.state, 'succeeded');
  // … as soon as the second left the queue, not only once it had finished.
  const thirdMovedUp = at(`${j.d.root}/job/${third.jobId}/state`, (p) => {
    return (JSON.parse(p.toString()) as JobRecord).queuePosition === 1;
  });
  const secondEnded = at(`${j.d.root}/job/${second.jobId}/state`, (p) => {
    return (JSON.parse(p.toString()) as JobRecord).state === 'succeeded';
  });
  assert.ok(thirdMovedUp < secondEnded, 'position 1 published when the second job started');
  const thirdDone = await j.rec.job(third.jobId, TERMINAL);
  assert.equal(thirdDone.state, 'succeeded');
  await deleted(thirdDone.vm!);
  assert.equal(result(await j.c.call('vm.list')).vms.length, 0);
  // One VM per job: none was created beyond capacity (only to be thrown away).
  const made = new Set(
    j.rec
      .allVmStates()
      .filter((v) => [first.jobId, second.jobId, third.jobId].includes(v.metadata['mvirt.job']!))
      .map((v) => v.id),
  );
  assert.equal(made.size, 3, `VMs created for 3 jobs: ${made.size}`);
});

test('a queued job can be cancelled before it starts', async () => {
  const go = path.join(j.tmp, 'block-go');
  const blocker = await j.run({ image: 'default', argv: gated(go) });
  await j.rec.job(blocker.jobId, ['running']);
  const waiting = await j.run({ image: 'default', argv: ['echo', 'never'] });
  assert.equal(waiting.state, 'queued');
  const c = result(await j.c.call('job.cancel', { jobId: waiting.jobId }));
  assert.equal(c.state, 'cancelled');
  assert.equal(c.vm, null, 'no VM was booted for it');
  await open(go);
  const b = await j.rec.job(blocker.jobId, TERMINAL);
  await deleted(b.vm!);
  assert.equal(
    j.hv.spawned.some((p) => p.argv.includes('never')),
    false,
  );
});

test('an image job whose VM cannot be launched ends failed with the reason; no VM is left', async () => {
  j.hv.options.failLaunch = true;
  try {
    const r = result(
      await j.c.call('job.run', { image: 'default', argv: ['echo', 'x'], wait: true }),
    );
    assert.equal(r.state, 'failed');
    assert.match(r.reason ?? '', /could not be booted/);
    assert.match(r.reason ?? '', /fake launch failure/);
    await deleted(r.vm!);
  } finally {
    j.hv.options.failLaunch = false;
  }
  assert.equal(result(await j.c.call('vm.list')).vms.length, 0);
  // The queue is not stuck: the next image job runs.
  const ok = result(
    await j.c.call('job.run', { image: 'default', argv: ['echo', 'ok'], wait: true }),
  );
  assert.equal(ok.stdout, 'ok\n');
});

test('job.run on an image that does not exist is refused with IMAGE_NOT_FOUND', async () => {
  const r = await j.c.call('job.run', { image: 'no-such-image', argv: ['true'] });
  assert.equal(errorOf(r).code, 'IMAGE_NOT_FOUND');
  assert.deepEqual(result(await j.c.call('job.list', { state: 'queued' })).jobs, []);
});
