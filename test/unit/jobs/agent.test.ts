/**
 * Jobs and their agent's connection: a dropped channel the agent comes back
 * on, an agent that stays away past the grace period, a guest reboot, and a
 * VM that is still booting when the job is sent.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { VmRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor, groupMembers } from '../../../harness/fake-vms.js';
import {
  cleanupAll,
  gated,
  open,
  result,
  startJobDaemon,
  TERMINAL,
  text,
  until,
  type JobDaemon,
} from '../../support/jobs.js';

const GRACE_MS = 3000;

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon({ args: ['--job-agent-grace-ms', String(GRACE_MS)] });
});
after(cleanupAll);

/** Subscribes now; `message` resolves with the VM's next agent hello event. */
const nextHello = (vmId: string): Promise<{ message: Promise<Buffer> }> =>
  j.c.watch(
    `${j.d.root}/vm/${vmId}/events`,
    (_t, p) => (JSON.parse(p.toString()) as { type: string }).type === 'agent.hello',
  );

test('a dropped agent channel does not lose the job: the agent comes back and it finishes', async () => {
  const vm = await j.serviceVm('flaky');
  const go = path.join(j.tmp, 'flaky-go');
  const job = await j.run({ vm: 'flaky', argv: gated(go) });
  await j.rec.until(
    () => (text(j.rec.outputs(job.jobId)) === 'start\n' ? true : undefined),
    'job started',
  );
  const hello = await nextHello(vm.id);
  j.hv.guests.get(vm.id)!.dropChannel();
  await hello.message; // the agent is back, with the job in its hello
  await open(go);
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'succeeded', done.reason);
  const logs = result(await j.c.call('job.logs', { jobId: job.jobId }));
  assert.equal(logs.chunks.map((c) => c.data).join(''), 'start\nend\n');
  assert.deepEqual(
    j.rec.jobStates(job.jobId).map((r) => r.state),
    ['queued', 'running', 'succeeded'],
  );
});

test('an agent that stays away past the grace period: the job ends lost', async () => {
  const vm = await j.serviceVm('mute');
  const go = path.join(j.tmp, 'mute-go');
  const job = await j.run({ vm: 'mute', argv: gated(go) });
  await j.rec.job(job.jobId, ['running']);
  const guest = j.hv.guests.get(vm.id)!;
  const t0 = performance.now();
  await guest.agent.stop(); // the agent dies; the VM lives on
  guest.dropChannel();
  const done = await j.rec.job(job.jobId, TERMINAL, GRACE_MS + 10_000);
  const waited = performance.now() - t0;
  assert.equal(done.state, 'lost');
  assert.match(done.reason ?? '', new RegExp(`did not come back within ${GRACE_MS} ms`));
  assert.ok(waited >= GRACE_MS - 100, `lost after ${Math.round(waited)} ms, not before the grace`);
});

test('vm.reboot during a job: the job is lost, its processes are gone, the VM is ready again', async () => {
  const vm = await j.serviceVm('rebooter');
  const job = await j.run({
    vm: 'rebooter',
    argv: ['sh', '-c', 'sleep 1000 & sleep 1000', 'reboot-job'],
  });
  await j.rec.job(job.jobId, ['running']);
  const pgid = j.hv.spawned.find((p) => p.argv.includes('reboot-job'))!.pid;
  result(await j.c.call('vm.reboot', { vm: 'rebooter' }));
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'lost');
  assert.match(done.reason ?? '', /agent restarted/);
  await until(() => groupMembers(pgid).length === 0, 'job processes gone');
  await j.rec.until(
    () => (j.rec.vmStates(vm.id).at(-1)?.state === 'ready' ? true : undefined),
    'VM ready after the reboot',
  );
  // And it takes new jobs.
  const r = result(
    await j.c.call('job.run', { vm: 'rebooter', argv: ['echo', 'again'], wait: true }),
  );
  assert.equal(r.stdout, 'again\n');
});

test('a job sent to a service VM that is still booting runs once it is ready', async () => {
  const slow = await startJobDaemon({
    hv: createFakeHypervisor({ agent: 'real', realAgentStartDelayMs: 500 }),
  });
  result(await slow.c.call('vm.create', { name: 'slowpoke' }));
  const started = result(await slow.c.call('vm.start', { vm: 'slowpoke' }));
  assert.equal(started.state, 'starting');
  const job = await slow.run({ vm: 'slowpoke', argv: ['echo', 'late'] });
  assert.equal(job.state, 'queued');
  const done = await slow.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'succeeded', done.reason);
  assert.equal(text(slow.rec.outputs(job.jobId)), 'late\n');
  // It did wait for ready: the VM's ready state came before the job ran.
  const idx = (pred: (m: { topic: string; payload: Buffer }) => boolean) =>
    slow.rec.seen.findIndex(pred);
  const readyAt = idx(
    (m) =>
      m.topic === `${slow.d.root}/vm/${started.id}/state` &&
      m.payload.length > 0 &&
      (JSON.parse(m.payload.toString()) as VmRecord).state === 'ready',
  );
  const runningAt = idx(
    (m) =>
      m.topic === `${slow.d.root}/job/${job.jobId}/state` &&
      (JSON.parse(m.payload.toString()) as { state: string }).state === 'running',
  );
  assert.ok(readyAt >= 0 && runningAt > readyAt);
});

test('a job cancelled while its ephemeral VM boots is cancelled, and the VM is destroyed', async () => {
  const slow = await startJobDaemon({
    hv: createFakeHypervisor({ agent: 'real', realAgentStartDelayMs: 800 }),
  });
  const job = await slow.run({ image: 'default', argv: ['echo', 'never'] });
  // Wait until its VM exists and boots.
  const vmId = await slow.rec.until(() => {
    const v = slow.rec
      .allVmStates()
      .find((x) => x.metadata['mvirt.job'] === job.jobId && x.state === 'starting');
    return v?.id;
  }, 'the job VM starting');
  const c = result(await slow.c.call('job.cancel', { jobId: job.jobId }));
  assert.equal(c.state, 'cancelled');
  await slow.rec.until(
    () => (slow.rec.vmStates(vmId).at(-1) === null ? true : undefined),
    'the job VM deleted',
  );
  assert.equal(
    slow.hv.spawned.some((p) => p.argv.includes('never')),
    false,
    'never ran',
  );
  assert.deepEqual(result(await slow.c.call('vm.list')).vms, []);
  // The job stays cancelled (nothing later overwrote it).
  const later = result(await slow.c.call('job.get', { jobId: job.jobId }));
  assert.equal(later.state, 'cancelled');
});

test('a cancel sent while the agent is away takes effect when it comes back', async () => {
  const vm = await j.serviceVm('away');
  const go = path.join(j.tmp, 'away-go'); // never created: only the cancel ends the job
  const job = await j.run({ vm: 'away', argv: [...gated(go), 'away-job'] });
  await j.rec.job(job.jobId, ['running']);
  const pgid = j.hv.spawned.find((p) => p.argv.includes('away-job'))!.pid;
  const guest = j.hv.guests.get(vm.id)!;
  guest.setOnline(false);
  // The cancel is accepted while the agent cannot hear it …
  const cancelled = j.c.call('job.cancel', { jobId: job.jobId }, { timeoutMs: 20_000 });
  // (Requests are handled in order: once events.query sees the cancel, it was taken.)
  const cancelRecorded = async (): Promise<boolean> => {
    const r = result(await j.c.call('events.query', { objectId: job.jobId }));
    return r.events.some((e) => /: cancel$/.test(e.message));
  };
  for (let i = 0; !(await cancelRecorded()); i++) assert.ok(i < 500, 'cancel recorded');
  // … and the agent comes back within the grace period.
  guest.setOnline(true);
  const done = await j.rec.job(job.jobId, TERMINAL, GRACE_MS + 10_000);
  assert.equal(done.state, 'cancelled', done.reason);
  await until(() => groupMembers(pgid).length === 0, 'the job group is gone');
  // job.cancel answers once the job has ended.
  assert.equal((result(await cancelled) as { state: string }).state, 'cancelled');
});
