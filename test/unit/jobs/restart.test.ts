/**
 * A daemon restart in the middle of a job (the daemon closes and leaves its
 * VMs running; a new one starts on the same data dir and re-attaches): the
 * agent reconnects, says hello with its jobs, and the job finishes with every
 * chunk of its output stored exactly once, without a gap.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import type { JobLogs, JobRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import {
  cleanupAll,
  gated,
  open,
  result,
  startJobDaemon,
  text,
  TERMINAL,
  until,
  type JobDaemon,
} from '../../support/jobs.js';

const dirs: string[] = [];
after(async () => {
  await cleanupAll();
  for (const d of dirs) await removeDir(d);
});

/** Ten lines per phase, each its own chunk; between phases wait for a file; touch a marker after each. */
const PHASES = `
  phase() { for i in 1 2 3 4 5 6 7 8 9 10; do echo "$1$i"; echo "$1$i" >&2; sleep 0.01; done; }
  phase a; touch "$3"
  until [ -e "$1" ]; do sleep 0.01; done
  phase b; touch "$4"
  until [ -e "$2" ]; do sleep 0.01; done
  phase c
`;
const lines = (p: string): string =>
  Array.from({ length: 10 }, (_, i) => `${p}${i + 1}\n`).join('');

async function allLogs(j: JobDaemon, jobId: string): Promise<JobLogs['chunks']> {
  const out: JobLogs['chunks'] = [];
  let from = 0;
  for (;;) {
    const p = result(await j.c.call('job.logs', { jobId, fromSeq: from, maxBytes: 64 }));
    out.push(...p.chunks);
    from = p.nextSeq;
    if (!p.more) return out;
  }
}

test('daemon restart mid-job: the job finishes and its output has no gap', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const dataDir = await makeTempDir('mvirt-jobs-restart-');
  dirs.push(dataDir);
  const first = await startJobDaemon({ hv, dataDir });
  const vm = await first.serviceVm('svc');
  const f = (n: string) => path.join(first.tmp, n);
  const job = await first.run({
    vm: 'svc',
    argv: ['sh', '-c', PHASES, 'sh', f('go1'), f('go2'), f('a-done'), f('b-done')],
  });
  await until(() => existsSync(f('a-done')), 'phase a', 10_000);
  await first.rec.until(
    () => (text(first.rec.outputs(job.jobId), 'stdout').endsWith('a10\n') ? true : undefined),
    'phase a seen live',
  );
  await first.stopDaemon(); // VMs keep running

  // Phase b happens while no daemon listens: the agent keeps its output.
  await open(f('go1'));
  await until(() => existsSync(f('b-done')), 'phase b', 10_000);

  const second = await startJobDaemon({ hv, dataDir });
  // The job is still running after the restart (not lost) …
  const back = result(await second.c.call('job.get', { jobId: job.jobId }));
  assert.equal(back.state, 'running');
  assert.equal(back.vm, vm.id);
  // … and once the agent is back, phase c streams live to the new daemon.
  await open(f('go2'));
  const done = await second.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'succeeded', done.reason);
  assert.equal(done.exitCode, 0);
  assert.match(text(second.rec.outputs(job.jobId), 'stdout'), /c10\n$/, 'phase c came live');

  const chunks = await allLogs(second, job.jobId);
  assert.deepEqual(
    chunks.map((c) => c.seq),
    Array.from({ length: done.nextSeq }, (_, i) => i),
    'every seq 0 … nextSeq-1, once, in order',
  );
  assert.equal(text(chunks, 'stdout'), lines('a') + lines('b') + lines('c'));
  assert.equal(text(chunks, 'stderr'), lines('a') + lines('b') + lines('c'));
  assert.deepEqual(done.dropped, { chunks: 0, bytes: 0 });
  // The VM was re-attached, not rebooted, and is idle again.
  assert.equal(hv.launched.length, 1);
});

test('a job that finishes while the daemon is down ends succeeded after the restart', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const dataDir = await makeTempDir('mvirt-jobs-restart-');
  dirs.push(dataDir);
  const first = await startJobDaemon({ hv, dataDir });
  await first.serviceVm('svc');
  const f = (n: string) => path.join(first.tmp, n);
  // go2 exists from the start: phases b and c run back to back once go1 appears.
  await open(f('go2'));
  const job = await first.run({
    vm: 'svc',
    argv: [
      'sh',
      '-c',
      `${PHASES}  touch "$5"\n`,
      'sh',
      f('go1'),
      f('go2'),
      f('a-done'),
      f('b-done'),
      f('all-done'),
    ],
  });
  await until(() => existsSync(f('a-done')), 'phase a', 10_000);
  await first.stopDaemon();
  await open(f('go1'));
  await until(() => existsSync(f('all-done')), 'the job ran to its end', 10_000);

  const second = await startJobDaemon({ hv, dataDir });
  const done = await second.rec.job(job.jobId, TERMINAL);
  assert.equal(done.state, 'succeeded', done.reason);
  const chunks = await allLogs(second, job.jobId);
  assert.deepEqual(
    chunks.map((c) => c.seq),
    Array.from({ length: done.nextSeq }, (_, i) => i),
  );
  assert.equal(
    chunks
      .filter((c) => c.stream === 'stdout')
      .map((c) => c.data)
      .join(''),
    lines('a') + lines('b') + lines('c'),
  );
  await second.rec.until(
    () => (second.rec.vmStates(done.vm!).at(-1)?.state === 'ready' ? true : undefined),
    'the VM is ready again',
  );
});

test('a restart while output streams loses no chunk and stores none twice', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const dataDir = await makeTempDir('mvirt-jobs-restart-');
  dirs.push(dataDir);
  const first = await startJobDaemon({ hv, dataDir });
  await first.serviceVm('svc');
  const N = 400;
  const job = await first.run({
    vm: 'svc',
    argv: ['sh', '-c', `i=1; while [ $i -le ${N} ]; do echo "n$i"; i=$((i+1)); sleep 0.003; done`],
  });
  // Stop while lines are still coming.
  await first.rec.until(
    () => (first.rec.outputs(job.jobId).some((c) => c.data.includes('n40\n')) ? true : undefined),
    'output flowing',
  );
  await first.stopDaemon();
  const second = await startJobDaemon({ hv, dataDir });
  const done = await second.rec.job(job.jobId, TERMINAL, 30_000);
  assert.equal(done.state, 'succeeded', done.reason);
  const chunks = await allLogs(second, job.jobId);
  assert.deepEqual(
    chunks.map((c) => c.seq),
    Array.from({ length: done.nextSeq }, (_, i) => i),
  );
  assert.equal(
    chunks.map((c) => c.data).join(''),
    Array.from({ length: N }, (_, i) => `n${i + 1}\n`).join(''),
  );
  assert.deepEqual(done.dropped, { chunks: 0, bytes: 0 });
});

test('queued jobs survive a restart and then run in their order', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const dataDir = await makeTempDir('mvirt-jobs-restart-');
  dirs.push(dataDir);
  const args = ['--max-vms', '1'];
  const first = await startJobDaemon({ hv, dataDir, args });
  const go = path.join(first.tmp, 'go');
  const job1 = await first.run({ image: 'default', argv: gated(go) });
  await first.rec.job(job1.jobId, ['running']);
  const job2 = await first.run({ image: 'default', argv: ['echo', 'two'] });
  const job3 = await first.run({ image: 'default', argv: ['echo', 'three'] });
  assert.deepEqual([job2.queuePosition, job3.queuePosition], [1, 2]);
  await first.stopDaemon();

  const second = await startJobDaemon({ hv, dataDir, args });
  const get = async (id: string) => result(await second.c.call('job.get', { jobId: id }));
  assert.equal((await get(job1.jobId)).state, 'running');
  const [q2, q3] = [await get(job2.jobId), await get(job3.jobId)];
  assert.deepEqual(
    [q2.state, q2.queuePosition, q3.state, q3.queuePosition],
    ['queued', 1, 'queued', 2],
  );

  await open(go);
  for (const id of [job1.jobId, job2.jobId, job3.jobId])
    assert.equal((await second.rec.job(id, TERMINAL)).state, 'succeeded');
  const runningAt = (id: string): number =>
    second.rec.seen.findIndex(
      (m) =>
        m.topic === `${second.d.root}/job/${id}/state` &&
        (JSON.parse(m.payload.toString()) as JobRecord).state === 'running',
    );
  assert.ok(runningAt(job2.jobId) < runningAt(job3.jobId), 'FIFO: two ran before three');
  assert.equal(text(second.rec.outputs(job3.jobId)), 'three\n');
  const last = await second.rec.job(job3.jobId, TERMINAL);
  await second.rec.until(
    () => (second.rec.vmStates(last.vm!).at(-1) === null ? true : undefined),
    'the last job VM deleted',
  );
  assert.deepEqual(result(await second.c.call('vm.list')).vms, []);
});
