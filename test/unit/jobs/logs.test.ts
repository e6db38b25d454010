/**
 * job.logs: replay from any sequence number, pages bounded by maxBytes, and
 * output retention (--job-output-bytes) that keeps the newest output and
 * counts what it dropped.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { JobLogs, ParamsOf } from '../../../protocol/rpc.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

const RETAIN = 4096;

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon({ args: ['--job-output-bytes', String(RETAIN)] });
  await j.serviceVm('svc');
});
after(cleanupAll);

const logs = async (p: ParamsOf<'job.logs'>): Promise<JobLogs> =>
  result(await j.c.call('job.logs', p));

/** 24 lines, each written on its own (separate chunks), stdout and stderr mixed. */
const LINES = [
  'sh',
  '-c',
  'for i in $(seq 1 24); do echo "line $i"; echo "e$i" >&2; sleep 0.01; done',
];
const expectedOut = Array.from({ length: 24 }, (_, i) => `line ${i + 1}\n`).join('');

test('job.logs replays everything, and from any fromSeq', async () => {
  const job = await j.run({ vm: 'svc', argv: LINES });
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(done.state, 'succeeded');
  assert.ok(done.nextSeq >= 4, `several chunks (${done.nextSeq})`);

  const all = await logs({ jobId: job.jobId });
  assert.equal(all.more, false);
  assert.equal(all.firstSeq, 0);
  assert.equal(all.nextSeq, done.nextSeq);
  assert.deepEqual(
    all.chunks.map((c) => c.seq),
    Array.from({ length: done.nextSeq }, (_, i) => i),
  );
  const join = (cs: JobLogs['chunks'], s: string) =>
    cs
      .filter((c) => c.stream === s)
      .map((c) => c.data)
      .join('');
  assert.equal(join(all.chunks, 'stdout'), expectedOut);
  // The stored copy is what was published live.
  assert.deepEqual(all.chunks, j.rec.outputs(job.jobId));

  const k = Math.floor(done.nextSeq / 2);
  const tail = await logs({ jobId: job.jobId, fromSeq: k });
  assert.deepEqual(tail.chunks, all.chunks.slice(k));
  assert.equal(tail.nextSeq, done.nextSeq);

  // From the end: nothing more, and nextSeq is where more would start.
  const none = await logs({ jobId: job.jobId, fromSeq: done.nextSeq });
  assert.deepEqual(none.chunks, []);
  assert.equal(none.more, false);
  assert.equal(none.nextSeq, done.nextSeq);
});

test('job.logs pages with maxBytes: more and nextSeq walk through every chunk', async () => {
  const job = await j.run({ vm: 'svc', argv: LINES });
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  const all = await logs({ jobId: job.jobId });

  const pages: JobLogs[] = [];
  let from = 0;
  for (;;) {
    const p = await logs({ jobId: job.jobId, fromSeq: from, maxBytes: 20 });
    pages.push(p);
    const bytes = p.chunks.reduce((n, c) => n + Buffer.byteLength(c.data), 0);
    assert.ok(p.chunks.length === 1 || bytes <= 20, `page of ${bytes} bytes`);
    assert.equal(p.chunks[0]?.seq, from, 'a page starts at fromSeq');
    assert.equal(p.nextSeq, p.chunks.at(-1)!.seq + 1);
    from = p.nextSeq;
    if (!p.more) break;
    assert.ok(pages.length < 1000);
  }
  assert.ok(pages.length > 2, `several pages (${pages.length})`);
  assert.equal(from, done.nextSeq);
  assert.deepEqual(
    pages.flatMap((p) => p.chunks),
    all.chunks,
  );
  // A chunk bigger than maxBytes still comes (one per page): no livelock.
  const one = await logs({ jobId: job.jobId, maxBytes: 1 });
  assert.equal(one.chunks.length, 1);
  assert.equal(one.more, true);
});

test('retention keeps the newest output and reports what was dropped', async () => {
  // 16 chunks of 1000 bytes: far more than the 4096 bytes kept.
  const job = await j.run({
    vm: 'svc',
    argv: ['sh', '-c', 'for i in $(seq 1 16); do printf "%0999d\\n" $i; sleep 0.01; done'],
  });
  const done = await j.rec.job(job.jobId, ['succeeded', 'failed', 'lost']);
  assert.equal(done.state, 'succeeded');
  assert.equal(done.outputBytes, 16_000, 'outputBytes counts everything produced');
  assert.ok(done.dropped.chunks > 0, 'some chunks were dropped');

  const kept = await logs({ jobId: job.jobId });
  const keptBytes = kept.chunks.reduce((n, c) => n + Buffer.byteLength(c.data), 0);
  assert.ok(keptBytes <= RETAIN, `${keptBytes} bytes kept`);
  // Close to the limit: the newest chunk dropped would not have fitted. (Its
  // size from the live topic: under load the agent joins lines into bigger
  // chunks, so a fixed 1000-byte margin failed, 2026-12-08.)
  const live = j.rec.outputs(job.jobId);
  const lastDropped = live.find((c) => c.seq === kept.firstSeq - 1);
  assert.ok(lastDropped, 'the live topic had the chunk before the kept ones');
  assert.ok(
    keptBytes + Buffer.byteLength(lastDropped.data) > RETAIN,
    `close to the limit is kept: ${keptBytes} bytes, the next older chunk ${Buffer.byteLength(lastDropped.data)}`,
  );
  // The newest: up to the last chunk, contiguous.
  assert.equal(kept.chunks.at(-1)!.seq, done.nextSeq - 1);
  assert.equal(kept.chunks[0]!.seq, kept.firstSeq);
  assert.equal(kept.firstSeq + kept.chunks.length, done.nextSeq);
  assert.match(kept.chunks.at(-1)!.data, /0016\n$/);
  // The counts add up: dropped + kept = produced.
  assert.equal(done.dropped.chunks, kept.firstSeq);
  assert.equal(done.dropped.bytes + keptBytes, done.outputBytes);
  // Asking for what is gone gives what is left.
  const from0 = await logs({ jobId: job.jobId, fromSeq: 0 });
  assert.deepEqual(from0.chunks, kept.chunks);

  // job.run {wait} says the output was truncated.
  const w = result(
    await j.c.call('job.run', {
      vm: 'svc',
      argv: ['sh', '-c', 'for i in $(seq 1 16); do printf "%0999d\\n" $i; sleep 0.01; done'],
      wait: true,
    }),
  );
  assert.equal(w.truncated, true);
  assert.ok(w.stdout !== undefined && w.stdout.length <= RETAIN);
  assert.match(w.stdout, /0016\n$/);
});

test('job.logs of an unknown job is JOB_NOT_FOUND', async () => {
  assert.equal(
    errorOf(await j.c.call('job.logs', { jobId: 'job-0123456789abcdef' })).code,
    'JOB_NOT_FOUND',
  );
});
