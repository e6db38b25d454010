/**
 * Ending jobs from outside: timeout, cancel (with and without a group that
 * ignores SIGTERM), and the death of the VM. In every case the whole process
 * group of the job is gone afterwards (checked in /proc). Also ready ⇄ busy
 * and several jobs at once on one VM.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { VmRecord } from '../../../protocol/rpc.js';
import { groupMembers } from '../../../harness/fake-vms.js';
import {
  cleanupAll,
  gated,
  open,
  result,
  startJobDaemon,
  TERMINAL,
  until,
  type JobDaemon,
} from '../../support/jobs.js';

let j: JobDaemon;
let vm: VmRecord;
before(async () => {
  j = await startJobDaemon();
  vm = await j.serviceVm('svc');
});
after(cleanupAll);

/** The job's process group once it has at least `n` live members (its pid is the pgid). */
async function groupOf(tag: string, n: number): Promise<number> {
  const spawned = await j.rec.until(
    () => j.hv.spawned.find((p) => p.argv.includes(tag)),
    `job ${tag} spawned`,
  );
  await until(() => groupMembers(spawned.pid).length >= n, `${n} processes in group ${tag}`);
  return spawned.pid;
}

const gone = (pgid: number): Promise<void> =>
  until(() => groupMembers(pgid).length === 0, `process group ${pgid} gone`, 3000);

test('timeout: the job ends timed_out and its whole process group is gone', async () => {
  const tag = 'timeout-job';
  const job = await j.run({
    vm: 'svc',
    argv: ['sh', '-c', 'sleep 1000 & sleep 1000', tag],
    timeoutMs: 1500,
  });
  const pgid = await groupOf(tag, 2);
  assert.equal((await j.rec.job(job.jobId, ['running'])).state, 'running');
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'timed_out');
  assert.match(done.reason ?? '', /timed out after 1500 ms/);
  assert.equal(done.timeoutMs, 1500);
  await gone(pgid);
});

test('cancel: job.cancel answers cancelled and the whole process group is gone', async () => {
  const tag = 'cancel-job';
  const job = await j.run({ vm: 'svc', argv: ['sh', '-c', 'sleep 1000 & sleep 1000', tag] });
  const pgid = await groupOf(tag, 2);
  await j.rec.job(job.jobId, ['running']);
  const r = result(await j.c.call('job.cancel', { jobId: job.jobId }));
  assert.equal(r.state, 'cancelled');
  assert.ok(r.finishedAt);
  await gone(pgid);
  // Cancelling again is harmless and changes nothing.
  const again = result(await j.c.call('job.cancel', { jobId: job.jobId }));
  assert.equal(again.state, 'cancelled');
  assert.equal(again.finishedAt, r.finishedAt);
});

test('cancel of a group that ignores SIGTERM escalates to SIGKILL', async () => {
  const tag = 'stubborn-job';
  const job = await j.run({
    vm: 'svc',
    argv: ['sh', '-c', 'trap "" TERM; sleep 1000 & sleep 1000', tag],
  });
  const pgid = await groupOf(tag, 2);
  await j.rec.job(job.jobId, ['running']);
  const r = result(await j.c.call('job.cancel', { jobId: job.jobId }));
  assert.equal(r.state, 'cancelled');
  assert.equal(r.signal, 'SIGKILL');
  await gone(pgid);
});

test('a VM is busy while a job runs and ready afterwards', async () => {
  const go = path.join(j.tmp, 'busy-go');
  const job = await j.run({ vm: 'svc', argv: gated(go) });
  await j.rec.job(job.jobId, ['running']);
  await j.rec.until(
    () => (j.rec.vmStates(vm.id).at(-1)?.state === 'busy' ? true : undefined),
    'VM busy',
  );
  assert.equal(result(await j.c.call('vm.get', { vm: 'svc' })).state, 'busy');
  await open(go);
  assert.equal((await j.rec.job(job.jobId, TERMINAL)).state, 'succeeded');
  await j.rec.until(
    () => (j.rec.vmStates(vm.id).at(-1)?.state === 'ready' ? true : undefined),
    'VM ready again',
  );
  assert.equal(result(await j.c.call('vm.get', { vm: 'svc' })).state, 'ready');
});

test('4 concurrent jobs on one VM: all run at once; the VM stays busy until the last ends', async () => {
  const gos = [0, 1, 2, 3].map((i) => path.join(j.tmp, `conc-${i}`));
  const jobs = await Promise.all(
    gos.map((go, i) => j.run({ vm: 'svc', argv: gated(go, `s${i}`, `e${i}`) })),
  );
  // All four have started (each printed its first line) while none may finish.
  for (const [i, job] of jobs.entries()) {
    await j.rec.until(
      () => (j.rec.outputs(job.jobId).some((c) => c.data === `s${i}\n`) ? true : undefined),
      `job ${i} started`,
    );
  }
  for (const job of jobs) assert.equal(j.rec.jobStates(job.jobId).at(-1)?.state, 'running');
  assert.equal(new Set(jobs.map((x) => x.jobId)).size, 4);

  for (const go of gos.slice(0, 3)) await open(go);
  for (const job of jobs.slice(0, 3))
    assert.equal((await j.rec.job(job.jobId, TERMINAL)).state, 'succeeded');
  assert.equal(result(await j.c.call('vm.get', { vm: 'svc' })).state, 'busy');
  assert.equal(j.rec.jobStates(jobs[3]!.jobId).at(-1)?.state, 'running');

  await open(gos[3]!);
  assert.equal((await j.rec.job(jobs[3]!.jobId, TERMINAL)).state, 'succeeded');
  await j.rec.until(
    () => (j.rec.vmStates(vm.id).at(-1)?.state === 'ready' ? true : undefined),
    'VM ready after the last job',
  );
  for (const [i, job] of jobs.entries()) {
    const out = j.rec
      .outputs(job.jobId)
      .map((c) => c.data)
      .join('');
    assert.equal(out, `s${i}\ne${i}\n`, 'each job got its own output');
  }
});

test('a job whose VM is killed ends lost, and its processes die with the VM', async () => {
  const doomed = await j.serviceVm('doomed');
  const tag = 'doomed-job';
  const job = await j.run({ vm: 'doomed', argv: ['sh', '-c', 'sleep 1000 & sleep 1000', tag] });
  const pgid = await groupOf(tag, 2);
  await j.rec.job(job.jobId, ['running']);
  const killed = result(await j.c.call('vm.kill', { vm: 'doomed' }));
  assert.equal(killed.state, 'stopped');
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'lost');
  assert.match(done.reason ?? '', /doomed/);
  assert.equal(done.vm, doomed.id);
  await gone(pgid);
  // The other VM did not notice.
  assert.equal(result(await j.c.call('vm.get', { vm: 'svc' })).state, 'ready');
});

test('vm.stop of a VM running a job: the job ends lost with a reason and its processes are gone', async () => {
  const vm = await j.serviceVm('stopme');
  const tag = 'stopme-job';
  const job = await j.run({ vm: 'stopme', argv: ['sh', '-c', 'sleep 1000 & sleep 1000', tag] });
  const pgid = await groupOf(tag, 2);
  await j.rec.job(job.jobId, ['running']);
  const stopped = result(
    await j.c.call('vm.stop', { vm: 'stopme', timeoutMs: 5000 }, { timeoutMs: 15_000 }),
  );
  assert.equal(stopped.state, 'stopped');
  assert.deepEqual(j.hv.guests.get(vm.id)!.powerCalls, ['poweroff'], 'through the agent');
  const done = await j.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'lost');
  assert.match(done.reason ?? '', /stopme/);
  await gone(pgid);
});
