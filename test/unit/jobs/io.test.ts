/**
 * job.signal and job.stdin against mvirtd with VMs running the real agent
 * core (real processes): a signal reaches a job's trap; megabytes of binary
 * input streamed chunk by chunk (each answered once the job's pipe took it)
 * reach the job intact; a job that stops reading ends the stream with
 * `open: false`; a call for a queued job waits for it to run (stdin) or is
 * refused with JOB_NOT_RUNNING (signal); bad params are refused typed.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { JOB_STDIN_CHUNK_BYTES, type DryRunPlan } from '../../../protocol/rpc.js';
import {
  cleanupAll,
  errorOf,
  result,
  startJobDaemon,
  text,
  type JobDaemon,
} from '../../support/jobs.js';

after(cleanupAll);

/** Stream `data` to the job, a chunk per call, each sent once the one before was answered. */
async function stream(j: JobDaemon, jobId: string, data: Buffer): Promise<boolean[]> {
  const opens: boolean[] = [];
  for (let at = 0; at < data.length || at === 0; at += JOB_STDIN_CHUNK_BYTES) {
    const chunk = data.subarray(at, at + JOB_STDIN_CHUNK_BYTES);
    const last = at + JOB_STDIN_CHUNK_BYTES >= data.length;
    const r = result(
      await j.c.call('job.stdin', { jobId, data: chunk.toString('base64'), eof: last }),
    );
    opens.push(r.open);
    if (!r.open) break;
  }
  return opens;
}

const stdoutOf = (j: JobDaemon, jobId: string) => text(j.rec.outputs(jobId), 'stdout');

test('job.signal reaches the job: SIGUSR1 runs its trap', async () => {
  const j = await startJobDaemon();
  await j.serviceVm('svc');
  const job = await j.run({
    vm: 'svc',
    argv: [
      'sh',
      '-c',
      'trap "echo got-usr1; exit 7" USR1; echo ready; while :; do sleep 0.05; done',
    ],
  });
  await j.rec.until(() => (stdoutOf(j, job.jobId) === 'ready\n' ? true : undefined), 'ready');

  const plan = result(
    await j.c.call('job.signal', { jobId: job.jobId, signal: 'SIGUSR1', dryRun: true }),
  ) as unknown as DryRunPlan;
  assert.deepEqual(plan.commands, [
    { kind: 'agent', type: 'signal', body: { jobId: job.jobId, signal: 'SIGUSR1' } },
  ]);

  const r = result(await j.c.call('job.signal', { jobId: job.jobId, signal: 'SIGUSR1' }));
  assert.equal(r.delivered, true);
  const end = await j.rec.job(job.jobId, ['failed', 'succeeded']);
  assert.equal(end.exitCode, 7);
  assert.match(stdoutOf(j, job.jobId), /got-usr1\n$/);
  const audit = result(await j.c.call('events.query', { objectId: job.jobId, limit: 50 }));
  assert.ok(audit.events.some((e) => e.message === `job ${job.jobId}: SIGUSR1`));

  // Over: refused, typed, with its state.
  const late = await j.c.call('job.signal', { jobId: job.jobId, signal: 'SIGTERM' });
  assert.equal(errorOf(late).code, 'JOB_NOT_RUNNING');
  assert.deepEqual(errorOf(late).details, { state: end.state });
});

test('job.stdin streams binary input chunk by chunk; the job gets every byte', async () => {
  const j = await startJobDaemon();
  await j.serviceVm('svc');
  const data = randomBytes(5 * 1024 * 1024 + 123);
  const job = await j.run({ vm: 'svc', argv: ['sha256sum'], stdinOpen: true });
  const opens = await stream(j, job.jobId, data);
  assert.equal(opens.length, Math.ceil(data.length / JOB_STDIN_CHUNK_BYTES));
  assert.deepEqual(opens.slice(0, -1), Array(opens.length - 1).fill(true));
  assert.equal(opens.at(-1), false, 'closed by the last chunk (eof)');
  const end = await j.rec.job(job.jobId, ['succeeded', 'failed']);
  assert.equal(end.exitCode, 0);
  assert.equal(
    stdoutOf(j, job.jobId).split(' ')[0],
    createHash('sha256').update(data).digest('hex'),
  );
  // The job is over: more input is not taken.
  const after = result(await j.c.call('job.stdin', { jobId: job.jobId, data: 'AAAA' }));
  assert.equal(after.open, false);
});

test('a job that stops reading ends the stream: open false, the job itself succeeds', async () => {
  const j = await startJobDaemon();
  await j.serviceVm('svc');
  const job = await j.run({ vm: 'svc', argv: ['head', '-c', '10'], stdinOpen: true });
  const opens = await stream(j, job.jobId, randomBytes(8 * 1024 * 1024));
  assert.equal(opens.at(-1), false);
  assert.ok(opens.length < 32, `stopped after ${opens.length} chunks, not at the end`);
  const end = await j.rec.job(job.jobId, ['succeeded', 'failed']);
  assert.equal(end.exitCode, 0);
  assert.equal(
    j.rec.outputs(job.jobId).reduce((n, c) => n + Buffer.byteLength(c.data), 0) > 0,
    true,
  );
});

test('a queued job: job.stdin waits until it runs, job.signal is refused typed', async () => {
  const j = await startJobDaemon({ args: ['--max-vms', '1'] });
  await j.serviceVm('svc');
  // No room for its own VM: it waits in the queue.
  const job = await j.run({ argv: ['cat'], stdinOpen: true });
  assert.equal(job.state, 'queued');
  const sig = await j.c.call('job.signal', { jobId: job.jobId, signal: 'SIGTERM' });
  assert.equal(errorOf(sig).code, 'JOB_NOT_RUNNING');
  assert.match(errorOf(sig).message, /is queued: signal it once it runs/);
  const plan = result(
    await j.c.call('job.stdin', {
      jobId: job.jobId,
      data: Buffer.from('x').toString('base64'),
      dryRun: true,
    }),
  ) as unknown as DryRunPlan;
  assert.deepEqual(plan.steps, ['wait until the job runs', "write 1 bytes to the job's stdin"]);

  const input = Buffer.from('hello from the queue\n');
  const written = j.c.call('job.stdin', { jobId: job.jobId, data: input.toString('base64') });
  const closed = j.c.call('job.stdin', { jobId: job.jobId, data: '', eof: true });
  result(await j.c.call('vm.kill', { vm: 'svc' }));
  assert.equal(result(await written).open, true);
  assert.equal(result(await closed).open, false);
  const end = await j.rec.job(job.jobId, ['succeeded', 'failed']);
  assert.equal(end.exitCode, 0);
  assert.equal(stdoutOf(j, job.jobId), input.toString());
});

test('bad params are refused typed: not base64, too large, an unknown signal', async () => {
  const j = await startJobDaemon();
  const jobId = 'job-0123456789ab';
  for (const [method, params, why] of [
    ['job.stdin', { jobId, data: 'not base64!' }, /base64/],
    ['job.stdin', { jobId, data: 'QQ' }, /base64/],
    [
      'job.stdin',
      { jobId, data: Buffer.alloc(JOB_STDIN_CHUNK_BYTES + 3).toString('base64') },
      /data/,
    ],
    ['job.signal', { jobId, signal: 'SIGFOO' }, /signal/],
  ] as const) {
    const r = await j.c.call(method, params as never);
    assert.equal(
      errorOf(r).code,
      'INVALID_PARAMS',
      `${method} ${JSON.stringify(params).slice(0, 80)}`,
    );
    assert.match(errorOf(r).message, why);
  }
  const none = await j.c.call('job.stdin', { jobId, data: '' });
  assert.equal(errorOf(none).code, 'JOB_NOT_FOUND');
});

test('encoding: bytes passes output on as it is (base64), live, in job.logs and with wait', async () => {
  const j = await startJobDaemon();
  await j.serviceVm('svc');
  // Bytes that are not UTF-8, on both streams.
  const argv = ['sh', '-c', "printf '\\377\\000\\376A'; printf '\\300' >&2"];
  const done = result(
    await j.c.call('job.run', { vm: 'svc', argv, encoding: 'bytes', wait: true }),
  );
  assert.equal(done.encoding, 'bytes');
  assert.equal(done.stdout, Buffer.from([0xff, 0x00, 0xfe, 0x41]).toString('base64'));
  assert.equal(done.stderr, Buffer.from([0xc0]).toString('base64'));
  const logs = result(await j.c.call('job.logs', { jobId: done.jobId }));
  assert.ok(logs.chunks.every((c) => c.encoding === 'base64'));
  const live = j.rec.outputs(done.jobId);
  assert.ok(live.length > 0 && live.every((c) => c.encoding === 'base64'));
  const bytes = (s: 'stdout' | 'stderr') =>
    Buffer.concat(
      logs.chunks.filter((c) => c.stream === s).map((c) => Buffer.from(c.data, 'base64')),
    );
  assert.deepEqual([...bytes('stdout')], [0xff, 0x00, 0xfe, 0x41]);
  // The default is text: invalid UTF-8 becomes U+FFFD, and no encoding is said.
  const text = result(await j.c.call('job.run', { vm: 'svc', argv, wait: true }));
  assert.equal(text.encoding, undefined);
  assert.equal(text.stdout, '\uFFFD\u0000\uFFFDA');
});
