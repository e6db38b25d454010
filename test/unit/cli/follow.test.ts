/**
 * followJob's sequencing against streams a real mvirtd does not produce on
 * demand: chunks out of order and twice, chunks lost live and filled from
 * job.logs, pages, retention, a stale record, a lost connection. The daemon
 * side is an in-memory FollowClient (the seam follow.ts is written against)
 * that records every call; `mvirt run` and `mvirt logs` over MQTT against the
 * real daemon are in jobs.test.ts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  BACKFILL_CHUNKS,
  followJob,
  parseChunk,
  parseJobRecord,
  type FollowClient,
  type FollowOptions,
  type JobFeed,
} from '../../../host/cli/follow.js';
import { sequencer } from '../../../host/cli/sequencer.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { JobLogs, JobRecord, OutputChunk } from '../../../protocol/records.js';

/** A regression must fail, not hang: every wait here is for an event, bounded by this. */
const T = { timeout: 10_000 };
const JOB = 'job-0123456789ab';

function jobRecord(patch: Partial<JobRecord> = {}): JobRecord {
  return {
    jobId: JOB,
    vm: 'vm-0123456789ab',
    target: { kind: 'image', image: 'default' },
    argv: ['x'],
    state: 'queued',
    exitCode: null,
    signal: null,
    oomKilled: false,
    createdAt: '2026-01-01T00:00:00.000Z',
    startedAt: null,
    finishedAt: null,
    nextSeq: 0,
    outputBytes: 0,
    dropped: { chunks: 0, bytes: 0 },
    ...patch,
  };
}

const chunk = (seq: number, data: string, stream: OutputChunk['stream'] = 'stdout') => ({
  seq,
  stream,
  data,
});

/**
 * One job as mvirtd holds it (its record, its stored output under retention)
 * and a FollowClient onto it: live chunks and records go to whoever watches,
 * synchronously; every call is recorded in `calls` ('watch', 'logs N', 'get',
 * 'unwatch').
 */
function memoryJob() {
  let rec = jobRecord();
  const stored: OutputChunk[] = [];
  let firstSeq = 0;
  const feeds = new Set<JobFeed>();
  const closers = new Set<() => void>();
  const calls: string[] = [];
  const callWaiters = new Set<() => void>();
  const called = (c: string): void => {
    calls.push(c);
    for (const w of [...callWaiters]) w();
  };
  const m = {
    calls,
    feeds,
    /** Stored chunks per job.logs page (the daemon pages by bytes; the logic is the same). */
    pageChunks: Infinity,
    get record(): JobRecord {
      return rec;
    },
    client: {
      async watch(jobId, feed) {
        assert.equal(jobId, JOB);
        feeds.add(feed);
        called('watch');
        return async () => {
          feeds.delete(feed);
          called('unwatch');
        };
      },
      async logs(jobId, fromSeq): Promise<JobLogs> {
        assert.equal(jobId, JOB);
        called(`logs ${fromSeq}`);
        const from = Math.max(fromSeq, firstSeq);
        const rest = stored.filter((c) => c.seq >= from);
        const page = rest.slice(0, m.pageChunks);
        return {
          chunks: page,
          nextSeq: page.length > 0 ? page.at(-1)!.seq + 1 : Math.max(from, rec.nextSeq),
          more: rest.length > page.length,
          firstSeq,
        };
      },
      async get(jobId) {
        assert.equal(jobId, JOB);
        called('get');
        return rec;
      },
      onClose(cb) {
        closers.add(cb);
        return () => void closers.delete(cb);
      },
    } satisfies FollowClient,
    /** The job writes: stored (unless lost before storage) and published live (unless lost live). */
    produce(
      data: string,
      o: { stream?: OutputChunk['stream']; stored?: boolean; live?: boolean } = {},
    ) {
      const c = chunk(rec.nextSeq, data, o.stream);
      rec = { ...rec, nextSeq: rec.nextSeq + 1 };
      if (o.stored !== false) stored.push(c);
      if (o.live !== false) m.live(c);
      return c;
    },
    /** Publish a chunk live only, as it is (out of order, again). */
    live(c: OutputChunk) {
      for (const f of [...feeds]) f.chunk(c);
    },
    /** Change the record and publish it on the state topic. */
    set(patch: Partial<JobRecord>) {
      rec = { ...rec, ...patch };
      for (const f of [...feeds]) f.record(rec);
    },
    /** Retention: forget the oldest n stored chunks. */
    drop(n: number) {
      stored.splice(0, n);
      firstSeq += n;
      rec = { ...rec, dropped: { chunks: firstSeq, bytes: 0 } };
    },
    closeConnection() {
      for (const cb of [...closers]) cb();
    },
    /** Resolve once a call satisfies `pred` (already made or still to come). */
    until(pred: (c: string) => boolean): Promise<void> {
      return new Promise((resolve) => {
        const check = (): void => {
          if (!calls.some(pred)) return;
          callWaiters.delete(check);
          resolve();
        };
        callWaiters.add(check);
        check();
      });
    },
  };
  return m;
}

/** What followJob printed: chunks by stream, notes, records, in the order they came. */
function printed() {
  const writes: ['out' | 'err' | 'note', string][] = [];
  const records: JobRecord[] = [];
  const waiters = new Set<() => void>();
  const text = (w: 'out' | 'err' | 'note') =>
    writes
      .filter(([k]) => k === w)
      .map(([, t]) => t)
      .join('');
  const push = (w: ['out' | 'err' | 'note', string]): void => {
    writes.push(w);
    for (const f of [...waiters]) f();
  };
  return {
    writes,
    out: () => text('out'),
    err: () => text('err'),
    notes: () => writes.filter(([k]) => k === 'note').map(([, t]) => t),
    records,
    opts(o: Partial<FollowOptions> = {}): FollowOptions {
      return {
        jobId: JOB,
        follow: true,
        onChunk: (c) => push([c.stream === 'stderr' ? 'err' : 'out', c.data]),
        onNote: (line) => push(['note', line]),
        onRecord: (r) => void records.push(r),
        ...o,
      };
    },
    /** Resolve once stdout holds `s`. */
    untilOut(s: string): Promise<void> {
      return new Promise((resolve) => {
        const check = (): void => {
          if (!text('out').includes(s)) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      });
    },
  };
}

describe('followJob: in order, once, whatever the stream does', () => {
  it('subscribes before it reads the store: stored output first, then live', T, async () => {
    const m = memoryJob();
    m.set({ state: 'running' });
    // Before anyone watched: only the store has these.
    m.produce('early\n');
    m.produce('early err\n', { stream: 'stderr' });
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.produce('late\n');
    // Caught up while the job runs, not only once it has ended.
    await p.untilOut('early\nlate\n');
    m.set({ state: 'succeeded', exitCode: 0 });
    const rec = await done;
    assert.equal(rec?.state, 'succeeded');
    assert.equal(p.out(), 'early\nlate\n');
    assert.equal(p.err(), 'early err\n');
    assert.deepEqual(m.calls, ['watch', 'logs 0', 'unwatch']);
    assert.equal(m.feeds.size, 0, 'unsubscribed');
  });

  it('prints out-of-order and duplicate live chunks once, in order', T, async () => {
    const m = memoryJob();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.set({ state: 'running' });
    for (const c of [
      chunk(2, 'three '),
      chunk(0, 'one '),
      chunk(0, 'one '),
      chunk(3, 'four'),
      chunk(1, 'two '),
      chunk(2, 'three '),
    ])
      m.live(c); // live only: never stored
    await p.untilOut('one two three four');
    m.set({ state: 'succeeded', exitCode: 0, nextSeq: 4 });
    await done;
    assert.equal(p.out(), 'one two three four');
    assert.deepEqual(
      p.writes.map(([, t]) => t),
      ['one ', 'two ', 'three ', 'four'],
    );
    assert.deepEqual(m.calls, ['watch', 'logs 0', 'unwatch'], 'no gap: the catch-up only');
  });

  it('a job that ended before it subscribed comes entirely from the store', T, async () => {
    const m = memoryJob();
    m.produce('all done\n');
    m.set({ state: 'succeeded', exitCode: 0 });
    const p = printed();
    // No record at hand (`mvirt logs -f`): job.get asks for it.
    const rec = await followJob(m.client, p.opts());
    assert.equal(rec?.state, 'succeeded');
    assert.equal(p.out(), 'all done\n');
    assert.deepEqual(m.calls, ['watch', 'logs 0', 'get', 'unwatch']);
  });

  it('fills a gap that is still open when the job ends from job.logs', T, async () => {
    const m = memoryJob();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.produce('a');
    m.produce('b', { live: false }); // lost live, stored
    m.produce('c');
    m.set({ state: 'succeeded', exitCode: 0 });
    await done;
    assert.equal(p.out(), 'abc');
    assert.deepEqual(m.calls, ['watch', 'logs 0', 'logs 1', 'unwatch']);
  });

  it(
    `asks job.logs for a gap while the job runs once ${BACKFILL_CHUNKS} chunks wait behind it`,
    T,
    async () => {
      const m = memoryJob();
      const p = printed();
      const done = followJob(m.client, p.opts({ initial: m.record }));
      await m.until((c) => c === 'logs 0');
      m.set({ state: 'running' });
      m.produce('start ');
      m.produce('gap ', { live: false });
      for (let i = 0; i < BACKFILL_CHUNKS; i++) m.produce('.');
      // Printed while the job still runs: the gap did not wait for the end.
      await p.untilOut(`start gap ${'.'.repeat(BACKFILL_CHUNKS)}`);
      assert.equal(m.record.state, 'running');
      assert.deepEqual(m.calls, ['watch', 'logs 0', 'logs 1']);
      m.set({ state: 'succeeded', exitCode: 0 });
      await done;
    },
  );

  it('reads the store in pages (more, nextSeq) without following', T, async () => {
    const m = memoryJob();
    for (let i = 0; i < 7; i++) m.produce(`${i}\n`, { stream: i % 3 === 2 ? 'stderr' : 'stdout' });
    m.set({ state: 'succeeded', exitCode: 0 });
    m.pageChunks = 2;
    const p = printed();
    assert.equal(await followJob(m.client, p.opts({ follow: false })), null);
    assert.equal(p.out(), '0\n1\n3\n4\n6\n');
    assert.equal(p.err(), '2\n5\n');
    assert.deepEqual(m.calls, ['logs 0', 'logs 2', 'logs 4', 'logs 6'], 'no subscription');
  });

  it('skips what retention dropped with one note', T, async () => {
    const m = memoryJob();
    for (let i = 0; i < 7; i++) m.produce(`${i}\n`);
    m.set({ state: 'succeeded', exitCode: 0 });
    m.drop(3);
    m.pageChunks = 2;
    const p = printed();
    await followJob(m.client, p.opts({ follow: false }));
    assert.equal(p.out(), '3\n4\n5\n6\n');
    assert.equal(p.notes().length, 1, p.notes().join('\n'));
    assert.match(
      p.notes()[0]!,
      /^mvirt: note: 3 output chunks of job-0123456789ab before #3 were dropped by the daemon's output retention/,
    );
    assert.deepEqual(m.calls, ['logs 0', 'logs 5']);
  });

  it('says which chunks are missing when the daemon never stored them', T, async () => {
    const m = memoryJob();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.produce('a');
    m.produce('b', { live: false, stored: false });
    m.produce('c', { live: false, stored: false });
    m.set({ state: 'failed', exitCode: 1 });
    assert.equal((await done)?.state, 'failed');
    assert.equal(p.out(), 'a');
    assert.deepEqual(p.notes(), [
      'mvirt: note: 2 output chunks of job-0123456789ab (#1–#2) are missing: the daemon has not stored them',
    ]);
  });

  it('hands each newer record to onRecord and ignores a stale one after the end', T, async () => {
    const m = memoryJob();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.set({ queuePosition: 1 });
    m.set({ state: 'running', queuePosition: undefined });
    m.set({ state: 'cancelled', signal: 'SIGTERM' });
    // A retry of an older state arriving late must not undo the end.
    m.set({ state: 'running', signal: null });
    const rec = await done;
    assert.equal(rec?.state, 'cancelled');
    assert.deepEqual(
      p.records.map((r) => r.state),
      ['queued', 'queued', 'running', 'cancelled'],
    );
  });

  it('an abort ends following at once with null; nothing is printed after', T, async () => {
    const m = memoryJob();
    const stop = new AbortController();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record, signal: stop.signal }));
    await m.until((c) => c === 'logs 0');
    m.set({ state: 'running' });
    m.produce('before\n');
    stop.abort();
    assert.equal(await done, null);
    assert.equal(m.feeds.size, 0, 'unsubscribed');
    m.produce('after\n');
    assert.equal(p.out(), 'before\n');
    assert.equal(m.calls.at(-1), 'unwatch');
  });

  it('a lost connection fails with CONNECTION_FAILED and says how to follow again', T, async () => {
    const m = memoryJob();
    const p = printed();
    const done = followJob(m.client, p.opts({ initial: m.record }));
    await m.until((c) => c === 'logs 0');
    m.closeConnection();
    await assert.rejects(done, (err: unknown) => {
      assert.ok(err instanceof MvirtError, String(err));
      assert.equal(err.code, 'CONNECTION_FAILED');
      assert.match(err.message, /the job goes on: `mvirt logs -f job-0123456789ab`/);
      return true;
    });
    assert.equal(m.feeds.size, 0);
  });
});

describe('job output ordering and payloads, without a daemon', () => {
  it('the sequencer prints in order, once, and skips what retention dropped', () => {
    const out: number[] = [];
    const s = sequencer((c) => out.push(c.seq));
    const c = (seq: number): OutputChunk => chunk(seq, String(seq));
    s.add(c(1));
    s.add(c(2));
    assert.deepEqual(out, []);
    assert.equal(s.held, 2);
    s.add(c(0));
    s.add(c(1));
    assert.deepEqual(out, [0, 1, 2]);
    s.add(c(6));
    s.add(c(4));
    // 3 and 5 were dropped: 4 and 6 were held and are printed, 3 and 5 are counted.
    assert.equal(s.skipTo(6), 2);
    assert.deepEqual(out, [0, 1, 2, 4, 6]);
    assert.equal(s.next, 7);
    assert.equal(s.held, 0);
    assert.equal(s.skipTo(3), 0);
  });

  it('reads live chunk payloads strictly', () => {
    const p = (v: unknown) => parseChunk(Buffer.from(JSON.stringify(v)));
    assert.deepEqual(p({ seq: 1, stream: 'stderr', data: 'x' }), chunk(1, 'x', 'stderr'));
    assert.equal(p({ seq: -1, stream: 'stdout', data: 'x' }), null);
    assert.equal(p({ seq: 1, stream: 'stdin', data: 'x' }), null);
    assert.equal(p({ seq: 1.5, stream: 'stdout', data: 'x' }), null);
    assert.equal(p({ seq: 1, stream: 'stdout', data: 'x', extra: 1 }), null);
    assert.equal(parseChunk(Buffer.from('not json')), null);
    assert.equal(parseChunk(Buffer.alloc(0)), null);
  });

  it('takes a state payload only when it is a record of this job', () => {
    const p = (v: unknown, id = JOB) => parseJobRecord(Buffer.from(JSON.stringify(v)), id);
    assert.deepEqual(p(jobRecord({ state: 'running' })), jobRecord({ state: 'running' }));
    assert.equal(p(jobRecord(), 'job-ffffffffffff'), null, 'another job');
    assert.equal(p({ ...jobRecord(), state: 'napping' }), null);
    assert.equal(parseJobRecord(Buffer.alloc(0), JOB), null, 'a cleared retained state');
  });
});
