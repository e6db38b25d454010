/**
 * One job's output on the host: dedup and ordering by sequence number, live
 * publication, and storage under a byte cap.
 *
 * The agent sends chunks in order, at least once (a chunk in flight when the
 * channel drops is sent again). So a chunk below `nextSeq` is a duplicate and
 * is ignored; a chunk above it means some were lost on the way (after a
 * daemon crash between receipt and storage): it is held back (bounded) while
 * the caller asks the agent to replay from `nextSeq`; when the replay is over
 * and the hole is still there, the agent no longer had those chunks and the
 * hole is recorded as dropped (`skipGap`).
 *
 * Chunks are written in batches (one transaction per batch, not one fsync per
 * chunk); a batch is flushed when it is large, after a short delay, and before
 * any state change of the job. What a crash loses from the last batch the
 * agent still has in its replay buffer, and the next hello brings it back.
 */
import { StringDecoder } from 'node:string_decoder';
import type { JobRepo, StoredChunk } from '../store/index.js';
import type { OutputChunk } from '../../protocol/rpc.js';

export interface OutputLogOptions {
  /** Stored bytes per job at most; the oldest chunks go first. */
  retainBytes: number;
  /** Flush a batch at this many bytes … */
  batchBytes: number;
  /** … or this long after its first chunk. */
  batchMs: number;
  /** Out-of-order chunks held back per job while a replay is awaited. */
  holdBytes: number;
  /**
   * Sequence numbers beyond what the job could have produced are refused:
   * at most `seqSlack` plus `maxChunksPerS` for each second since it started
   * ahead of `nextSeq`. The agent sends a chunk per read of a pipe and
   * coalesces small reads for 5 ms (guest-agent/jobs.ts), so one job makes
   * at most a few hundred chunks a second per stream plus one per 128 KiB;
   * 100,000 a second and a million of slack is far above that, and far
   * below the 2^53 a hostile guest sends to wreck its record (issue 12).
   */
  maxChunksPerS: number;
  seqSlack: number;
}

export const DEFAULT_OUTPUT_OPTIONS: OutputLogOptions = {
  retainBytes: 8 * 1024 * 1024,
  batchBytes: 256 * 1024,
  batchMs: 20,
  holdBytes: 4 * 1024 * 1024,
  maxChunksPerS: 100_000,
  seqSlack: 1_000_000,
};

/** `refused`: beyond what the job could have produced (see maxChunksPerS). */
export type AppendResult = 'ok' | 'duplicate' | 'gap' | 'refused';

export interface OutputLog {
  readonly nextSeq: number;
  /** Could the job have produced this sequence number by now? */
  plausible(seq: number): boolean;
  /** Take one chunk from the agent; `publish` gets it live when it is new and in order. */
  append(c: StoredChunk): AppendResult;
  /** Chunks after a hole are held back: is there a hole now? */
  readonly hasGap: boolean;
  /**
   * Give up on the hole: continue at the oldest held-back chunk, or at
   * `upTo` when nothing is held. Returns how many sequence numbers were skipped.
   */
  skipGap(upTo?: number): number;
  /** Write the pending batch now. */
  flush(): void;
  close(): void;
}

export function createOutputLog(deps: {
  jobId: string;
  repo: JobRepo;
  options: OutputLogOptions;
  /** The job's live topic (text, where invalid UTF-8 becomes U+FFFD; or base64 with `bytes`). */
  publish(chunk: OutputChunk, bytes: number): void;
  /** The job asked for its output as bytes (job.run {encoding: bytes}). */
  bytes?: boolean;
  /** For a storage error: logged by the caller, never thrown into the agent path. */
  onError(err: unknown): void;
  now?: () => number;
}): OutputLog {
  const { jobId, repo, options } = deps;
  const now = deps.now ?? Date.now;
  const rec = repo.get(jobId);
  // Since when the job could produce output: its start, or now (not started yet).
  const startedAt = rec?.startedAt ? Date.parse(rec.startedAt) : now();
  const plausible = (seq: number): boolean =>
    seq <=
    nextSeq + options.seqSlack + (options.maxChunksPerS * Math.max(0, now() - startedAt)) / 1000;
  let nextSeq = rec?.nextSeq ?? 0;
  let totalBytes = rec?.outputBytes ?? 0;
  const dropped = { ...(rec?.dropped ?? { chunks: 0, bytes: 0 }) };
  // Retention state: sizes of the stored chunks, oldest first.
  const stored: { seq: number; n: number }[] = rec ? repo.chunkSizes(jobId) : [];
  let storedBytes = stored.reduce((a, c) => a + c.n, 0);
  let firstSeq = stored[0]?.seq ?? nextSeq;
  let batch: StoredChunk[] = [];
  let batchBytes = 0;
  let timer: NodeJS.Timeout | null = null;
  /** Out-of-order chunks waiting for the hole before them to be filled. */
  const held = new Map<number, StoredChunk>();
  let heldBytes = 0;
  // Split multi-byte characters are joined across chunks of one stream.
  const decode = chunkDecoder(deps.bytes === true);

  function flush(): void {
    if (timer) clearTimeout(timer);
    timer = null;
    if (batch.length === 0) return;
    const rows = batch;
    batch = [];
    batchBytes = 0;
    try {
      repo.transaction(() => {
        for (const c of rows) {
          if (!repo.putChunk(jobId, c)) continue;
          stored.push({ seq: c.seq, n: c.data.length });
          storedBytes += c.data.length;
        }
        let cut = -1;
        while (storedBytes > options.retainBytes && stored.length > 1) {
          const old = stored.shift()!;
          storedBytes -= old.n;
          dropped.chunks++;
          dropped.bytes += old.n;
          cut = old.seq;
        }
        if (cut >= 0) repo.dropUpTo(jobId, cut);
        firstSeq = stored[0]?.seq ?? nextSeq;
        repo.setOutput(jobId, { nextSeq, totalBytes, firstSeq, dropped });
      });
    } catch (err) {
      deps.onError(err);
    }
  }

  function accept(c: StoredChunk): void {
    nextSeq++;
    totalBytes += c.data.length;
    batch.push(c);
    batchBytes += c.data.length;
    deps.publish(decode(c), c.data.length);
    if (batchBytes >= options.batchBytes) flush();
    else timer ??= setTimeout(flush, options.batchMs);
  }

  /** Held-back chunks that are now in order follow the one just accepted. */
  function acceptHeld(): void {
    for (let next = held.get(nextSeq); next; next = held.get(nextSeq)) {
      held.delete(next.seq);
      heldBytes -= next.data.length;
      accept(next);
    }
  }

  return {
    get nextSeq() {
      return nextSeq;
    },
    plausible,
    append(c) {
      if (c.seq < nextSeq || held.has(c.seq)) return 'duplicate';
      if (!plausible(c.seq)) return 'refused';
      if (c.seq > nextSeq) {
        // Beyond the bound it is dropped here and must come again in the replay.
        if (heldBytes + c.data.length <= options.holdBytes) {
          held.set(c.seq, c);
          heldBytes += c.data.length;
        }
        return 'gap';
      }
      accept(c);
      acceptHeld();
      return 'ok';
    },
    get hasGap() {
      return held.size > 0;
    },
    skipGap(upTo) {
      const target = held.size > 0 ? Math.min(...held.keys()) : (upTo ?? nextSeq);
      if (target <= nextSeq) return 0;
      const skipped = target - nextSeq;
      dropped.chunks += skipped;
      nextSeq = target;
      acceptHeld();
      flush();
      // flush() only writes with a batch: record the skip itself too.
      try {
        repo.setOutput(jobId, { nextSeq, totalBytes, firstSeq, dropped });
      } catch (err) {
        deps.onError(err);
      }
      return skipped;
    },
    flush,
    close() {
      flush();
      held.clear();
      heldBytes = 0;
    },
  };
}

/**
 * Stored chunks as the wire has them, in order: text (UTF-8, joining
 * multi-byte characters split across chunks of one stream), or for a job run
 * with encoding: bytes, the bytes as base64.
 */
export function chunkDecoder(bytes: boolean): (c: StoredChunk) => OutputChunk {
  if (bytes)
    return (c) => ({
      seq: c.seq,
      stream: c.stream,
      data: c.data.toString('base64'),
      encoding: 'base64',
    });
  const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  return (c) => ({ seq: c.seq, stream: c.stream, data: decoders[c.stream].write(c.data) });
}

/** A page of stored chunks for the wire (see chunkDecoder). */
export function decodeChunks(chunks: StoredChunk[], bytes = false): OutputChunk[] {
  return chunks.map(chunkDecoder(bytes));
}
