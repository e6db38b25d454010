/**
 * A job's output, in order and exactly once: the one place that knows how,
 * used by `mvirt run` and `mvirt logs`.
 *
 * Chunks carry sequence numbers 0, 1, 2, … and come from two sources: the
 * live topic `job/<id>/output` (not retained: what was published before we
 * subscribed is gone from it, and MQTT does not promise that a retry keeps
 * the order) and `job.logs` (the stored output, in pages). So: subscribe
 * first, then page job.logs from the start; every chunk then arrives at least
 * once, some twice. The sequencer (sequencer.ts) prints each one once, in
 * order, and holds live chunks that come ahead of a gap. Chunks below the
 * stored `firstSeq` were dropped by the daemon's retention: they are skipped
 * with one note. Once the job is terminal, job.logs fills whatever is still
 * missing below the record's `nextSeq`, and following ends.
 *
 * What it needs of mvirtd is the FollowClient seam: mqttFollowClient() over
 * MQTT; the unit tests script streams no real daemon produces on demand (out
 * of order, duplicated, with gaps, in pages) through one in memory.
 */
import type { MvirtClient } from '../../protocol/client.js';
import { decode } from '../../protocol/client-codec.js';
import { MvirtError } from '../../protocol/errors.js';
import { JobRecord, OutputChunk, type JobLogs } from '../../protocol/records.js';
import { isTerminalJob as isTerminal } from '../../protocol/states.js';
import { sequencer } from './sequencer.js';

/**
 * Live chunks held behind a gap before job.logs is asked for the gap while the
 * job still runs (again after as many more, so a gap the store cannot fill
 * does not turn into a request per chunk).
 */
export const BACKFILL_CHUNKS = 256;

function tryDecode(payload: Buffer): unknown {
  if (payload.length === 0) return null;
  try {
    return decode(payload);
  } catch {
    return null;
  }
}

/** A live `job/<id>/output` payload (protocol OutputChunk), or null when it is not one. */
export function parseChunk(payload: Buffer): OutputChunk | null {
  const r = OutputChunk.safeParse(tryDecode(payload));
  return r.success ? r.data : null;
}

/** A retained `job/<id>/state` payload of this job (protocol JobRecord), or null. */
export function parseJobRecord(payload: Buffer, jobId: string): JobRecord | null {
  const r = JobRecord.safeParse(tryDecode(payload));
  return r.success && r.data.jobId === jobId ? r.data : null;
}

/** The job's live topics, parsed: what FollowClient.watch delivers. */
export interface JobFeed {
  chunk(chunk: OutputChunk): void;
  record(rec: JobRecord): void;
}

/** What following a job needs of mvirtd. */
export interface FollowClient {
  /**
   * Deliver the job's live chunks and newer records to `feed` from the moment
   * this resolves (output subscribed first) until the returned function runs.
   */
  watch(jobId: string, feed: JobFeed): Promise<() => Promise<void>>;
  /** job.logs: one page of stored output from `fromSeq`. */
  logs(jobId: string, fromSeq: number): Promise<JobLogs>;
  get(jobId: string): Promise<JobRecord>;
  /** Run `cb` when the connection to mvirtd is lost; returns a function that stops that. */
  onClose(cb: () => void): () => void;
}

/** The FollowClient of a connected client: the job's topics and its RPCs. */
export function mqttFollowClient(c: MvirtClient): FollowClient {
  return {
    async watch(jobId, feed) {
      // Output first: from the moment this subscription stands nothing can be
      // missed live, and job.logs (asked after it) has everything before.
      const offOutput = await c.subscribe(c.topics.jobOutput(jobId), (_topic, payload) => {
        const chunk = parseChunk(payload);
        if (chunk) feed.chunk(chunk);
      });
      const offState = await c
        .subscribe(c.topics.jobState(jobId), (_topic, payload) => {
          const rec = parseJobRecord(payload, jobId);
          if (rec) feed.record(rec);
        })
        .catch(async (err: unknown) => {
          await offOutput().catch(() => undefined);
          throw err;
        });
      // Best effort, each whatever the other does (the connection may be gone).
      return async () => void (await Promise.allSettled([offState(), offOutput()]));
    },
    logs: (jobId, fromSeq) => c.call('job.logs', { jobId, fromSeq }),
    get: (jobId) => c.call('job.get', { jobId }),
    onClose(cb) {
      c.mqtt.on('close', cb);
      return () => void c.mqtt.removeListener('close', cb);
    },
  };
}

export interface FollowOptions {
  jobId: string;
  /** Keep following live output until the job is terminal; without it, print what is stored. */
  follow: boolean;
  onChunk(chunk: OutputChunk): void;
  /** A whole line for stderr (output lost to retention, output missing). */
  onNote(line: string): void;
  /** Each newer job record (state topic, job.get); follow only. */
  onRecord?(rec: JobRecord): void;
  /** The record at hand already (`mvirt run` has job.run's); job.get asks otherwise. */
  initial?: JobRecord;
  /** Stop following at once; followJob then resolves with null. */
  signal?: AbortSignal;
}

/**
 * Print a job's output through `onChunk`, in order and once each. With
 * `follow`, resolves with the terminal record once every chunk below its
 * nextSeq has been printed (or reported lost); without, once the stored output
 * is printed, with null. Null also when `signal` aborts.
 */
export async function followJob(c: FollowClient, o: FollowOptions): Promise<JobRecord | null> {
  const { jobId } = o;
  let finished = false;
  const seq = sequencer((chunk) => {
    if (!finished) o.onChunk(chunk);
  });

  const noteSkipped = (n: number, upTo: number): void => {
    if (n > 0 && !finished)
      o.onNote(
        `mvirt: note: ${n} output chunk${n === 1 ? '' : 's'} of ${jobId} before #${upTo} ` +
          `${n === 1 ? 'was' : 'were'} dropped by the daemon's output retention and cannot be shown`,
      );
  };

  /** Page job.logs from the next unprinted chunk until the store has no more. */
  async function page(): Promise<void> {
    let from = seq.next;
    for (;;) {
      if (finished) return;
      const r = await c.logs(jobId, from);
      if (finished) return;
      if (r.firstSeq > seq.next) noteSkipped(seq.skipTo(r.firstSeq), r.firstSeq);
      for (const chunk of r.chunks) seq.add(chunk);
      if (!r.more || r.nextSeq <= from) return;
      from = Math.max(r.nextSeq, seq.next);
    }
  }

  if (!o.follow) {
    try {
      await page();
    } finally {
      finished = true;
    }
    return null;
  }

  let resolveDone!: (rec: JobRecord | null) => void;
  let rejectDone!: (err: unknown) => void;
  const done = new Promise<JobRecord | null>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  const finish = (rec: JobRecord | null): void => {
    if (finished) return;
    finished = true;
    resolveDone(rec);
  };
  const fail = (err: unknown): void => {
    if (finished) return;
    finished = true;
    rejectDone(err);
  };

  let latest: JobRecord | undefined;
  let started = false;
  let busy = false;
  let again = false;
  let caughtUp = false;
  let backfillAt = BACKFILL_CHUNKS;

  const offer = (rec: JobRecord): void => {
    // A record that is not terminal cannot follow a terminal one: it is stale.
    if (latest && isTerminal(latest.state) && !isTerminal(rec.state)) return;
    latest = rec;
    o.onRecord?.(rec);
    kick();
  };

  function kick(): void {
    if (started && !finished) void pump();
  }

  /** One worker at a time: catch up, fill gaps, notice the end. */
  async function pump(): Promise<void> {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        if (finished) return;
        if (!caughtUp) {
          await page();
          caughtUp = true;
          if (!latest && !finished) offer(await c.get(jobId));
        }
        const rec = latest;
        if (rec && isTerminal(rec.state)) {
          const end = rec.nextSeq;
          if (seq.next < end) await page();
          if (seq.next < end) {
            if (again) continue; // something arrived meanwhile: look again
            const n = end - seq.next;
            o.onNote(
              `mvirt: note: ${n} output chunk${n === 1 ? '' : 's'} of ${jobId} (#${seq.next}–#${end - 1}) ` +
                `${n === 1 ? 'is' : 'are'} missing: the daemon has not stored ${n === 1 ? 'it' : 'them'}`,
            );
          }
          finish(rec);
          return;
        }
        if (seq.held >= backfillAt) {
          await page();
          backfillAt = seq.held + BACKFILL_CHUNKS;
        } else if (seq.held === 0) backfillAt = BACKFILL_CHUNKS;
      } while (again);
    } catch (err) {
      fail(err);
    } finally {
      busy = false;
    }
  }

  const cleanups: (() => unknown)[] = [];
  const onAbort = (): void => finish(null);
  const onClose = (): void =>
    fail(
      new MvirtError(
        'CONNECTION_FAILED',
        `lost the connection to the broker while following ${jobId}; the job goes on: \`mvirt logs -f ${jobId}\` follows it again`,
      ),
    );
  try {
    if (o.signal?.aborted) return null;
    if (o.initial) offer(o.initial);
    o.signal?.addEventListener('abort', onAbort);
    cleanups.push(() => o.signal?.removeEventListener('abort', onAbort));
    cleanups.push(c.onClose(onClose));
    cleanups.push(
      await c.watch(jobId, {
        chunk: (chunk) => {
          if (finished) return;
          seq.add(chunk);
          if (seq.held >= backfillAt || (latest && isTerminal(latest.state))) kick();
        },
        record: (rec) => {
          if (!finished) offer(rec);
        },
      }),
    );
    started = true;
    kick();
    return await done;
  } finally {
    finished = true;
    for (const f of cleanups.reverse()) {
      try {
        await f();
      } catch {
        // best effort: the other cleanups still run
      }
    }
  }
}
