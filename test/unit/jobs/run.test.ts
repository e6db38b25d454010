/**
 * job.run on a service VM whose agent is the real agent core: live output in
 * order, exit codes, spawn failures, {wait}, stdin, env and cwd.
 */
import assert from 'node:assert/strict';
import { realpathSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { DEFAULT_JOB_OPTIONS } from '../../../guest-agent/jobs.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import { cleanupAll, result, startJobDaemon, text, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
let vm: VmRecord;
before(async () => {
  j = await startJobDaemon();
  vm = await j.serviceVm('svc');
});
after(cleanupAll);

test('output arrives on job/<id>/output in seq order; the job ends succeeded with exitCode 0', async () => {
  const job = await j.run({
    vm: 'svc',
    argv: [
      'sh',
      '-c',
      'for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; sleep 0.01; done; echo bye',
    ],
  });
  assert.match(job.jobId, /^job-[0-9a-f]+$/);
  assert.equal(job.vm === vm.id || job.vm === null, true);
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(done.state, 'succeeded', done.reason);
  assert.equal(done.exitCode, 0);
  assert.equal(done.signal, null);
  assert.equal(done.vm, vm.id);
  assert.ok(done.finishedAt && done.startedAt, 'startedAt and finishedAt are set');
  assert.ok(
    j.hv.spawned.some((p) => p.vmId === vm.id && p.argv[0] === 'sh'),
    'the real agent of the VM spawned it',
  );

  // Everything published before the final state, in order, without gaps.
  const out = j.rec.outputs(job.jobId);
  assert.deepEqual(
    out.map((c) => c.seq),
    out.map((_, i) => i),
    'seq 0, 1, 2, … in arrival order',
  );
  assert.equal(done.nextSeq, out.length, 'every chunk was published live');
  assert.ok(out.some((c) => c.stream === 'stderr') && out.some((c) => c.stream === 'stdout'));
  assert.equal(text(out, 'stdout'), 'out 1\nout 2\nout 3\nout 4\nout 5\nbye\n');
  assert.equal(text(out, 'stderr'), 'err 1\nerr 2\nerr 3\nerr 4\nerr 5\n');
  // The job's life on its state topic: queued → running → succeeded.
  assert.deepEqual(
    j.rec
      .jobStates(job.jobId)
      .map((r) => r.state)
      .filter((s, i, a) => a[i - 1] !== s),
    ['queued', 'running', 'succeeded'],
  );
});

test('a nonzero exit makes the job failed with that exitCode', async () => {
  const job = await j.run({ vm: 'svc', argv: ['sh', '-c', 'echo oops >&2; exit 3'] });
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(done.state, 'failed');
  assert.equal(done.exitCode, 3);
  assert.match(done.reason ?? '', /exit code 3/);
  assert.equal(text(j.rec.outputs(job.jobId), 'stderr'), 'oops\n');
});

test('an argv that cannot be spawned makes the job failed with a reason', async () => {
  const job = await j.run({ vm: 'svc', argv: ['/nonexistent/program', 'x'] });
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(done.state, 'failed');
  assert.equal(done.exitCode, null);
  assert.match(done.reason ?? '', /could not be started/);
  assert.match(done.reason ?? '', /ENOENT/);
  // A bad cwd is a spawn failure too, and says which folder.
  const bad = await j.run({ vm: 'svc', argv: ['true'], cwd: '/nonexistent-dir' });
  const r2 = await j.rec.job(bad.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(r2.state, 'failed');
  assert.match(r2.reason ?? '', /nonexistent-dir/);
  // The VM is unharmed and idle again.
  assert.equal(result(await j.c.call('vm.get', { vm: 'svc' })).state, 'ready');
});

test('job.run {wait:true} answers once finished, with stdout, stderr and exitCode', async () => {
  const r = result(
    await j.c.call(
      'job.run',
      { vm: 'svc', argv: ['sh', '-c', 'printf hello; printf world >&2; exit 7'], wait: true },
      { timeoutMs: 15_000 },
    ),
  );
  assert.equal(r.state, 'failed');
  assert.equal(r.exitCode, 7);
  assert.equal(r.stdout, 'hello');
  assert.equal(r.stderr, 'world');
  assert.ok(r.finishedAt);
});

test('stdin is delivered to the job', async () => {
  const input = 'line one\nline two\nünïcödé\n';
  const r = result(
    await j.c.call('job.run', { vm: 'svc', argv: ['cat'], stdin: input, wait: true }),
  );
  assert.equal(r.state, 'succeeded');
  assert.equal(r.stdout, input);
  // Without stdin the job reads EOF at once (it does not hang).
  const r2 = result(await j.c.call('job.run', { vm: 'svc', argv: ['wc', '-c'], wait: true }));
  assert.equal(r2.stdout?.trim(), '0');
});

test('env and cwd reach the job', async () => {
  const cwd = realpathSync(j.tmp);
  const r = result(
    await j.c.call('job.run', {
      vm: 'svc',
      argv: ['sh', '-c', 'echo "$GREETING|$OTHER|$(pwd)"'],
      env: { GREETING: 'hi there', OTHER: 'x=y' },
      cwd,
      wait: true,
    }),
  );
  assert.equal(r.state, 'succeeded');
  assert.equal(r.stdout, `hi there|x=y|${cwd}\n`);
  assert.equal(r.cwd, cwd);
});

test('job.list filters by VM (id or name), state and limit, newest first', async () => {
  const all = result(await j.c.call('job.list', { vm: 'svc' }));
  assert.ok(all.jobs.length >= 6);
  assert.ok(all.jobs.every((x) => x.vm === vm.id));
  const byId = result(await j.c.call('job.list', { vm: vm.id }));
  assert.deepEqual(
    byId.jobs.map((x) => x.jobId),
    all.jobs.map((x) => x.jobId),
  );
  const created = all.jobs.map((x) => x.createdAt);
  assert.deepEqual(created, [...created].sort().reverse(), 'newest first');
  const failed = result(await j.c.call('job.list', { state: 'failed' }));
  assert.ok(failed.jobs.length >= 3 && failed.jobs.every((x) => x.state === 'failed'));
  const two = result(await j.c.call('job.list', { limit: 2 }));
  assert.deepEqual(
    two.jobs.map((x) => x.jobId),
    all.jobs.slice(0, 2).map((x) => x.jobId),
  );
  const none = result(await j.c.call('job.list', { vm: 'no-such-vm' }));
  assert.deepEqual(none.jobs, []);
});

test('multi-byte characters split across chunks arrive whole (live, logs and wait)', async () => {
  // '€' is 3 bytes: enough of them for more than one agent chunk, split mid-character.
  const n = Math.ceil((DEFAULT_JOB_OPTIONS.chunkBytes * 1.5) / 3) + 1;
  const expected = '€'.repeat(n);
  const r = result(
    await j.c.call('job.run', {
      vm: 'svc',
      argv: ['sh', '-c', `yes '€' | head -n ${n} | tr -d '\\n'`],
      wait: true,
    }),
  );
  assert.equal(r.state, 'succeeded');
  assert.equal(r.stdout, expected);
  assert.equal(r.outputBytes, n * 3);
  assert.equal(text(j.rec.outputs(r.jobId)), expected, 'live');
  const logs = result(await j.c.call('job.logs', { jobId: r.jobId }));
  assert.ok(logs.chunks.length >= 2, 'more than one chunk');
  assert.equal(logs.chunks.map((c) => c.data).join(''), expected, 'job.logs');
});
