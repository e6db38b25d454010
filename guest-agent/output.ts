/**
 * Turns a job's stdout/stderr reads into `output` chunks: one seq counter
 * shared by both streams (so the host can interleave them in order), chunks at
 * most `chunkBytes`, and small reads of one stream coalesced for a few ms so a
 * program printing line by line does not become one MQTT message per line.
 * Switching streams flushes first, which keeps the cross-stream order.
 * It also keeps a bounded ring of recent chunks for replay after a reconnect.
 */
export type StreamName = 'stdout' | 'stderr';

export interface Chunk {
  seq: number;
  stream: StreamName;
  data: Buffer;
}

export interface OutputOptions {
  chunkBytes: number;
  coalesceMs: number;
  replayBytes: number;
}

export interface OutputSink {
  write(stream: StreamName, data: Buffer): void;
  flush(): void;
  /** The next seq (= number of chunks emitted so far). */
  readonly nextSeq: number;
  /** Kept chunks with seq ≥ fromSeq (older ones may be gone). */
  replay(fromSeq: number): Chunk[];
  /** Free the replay ring (job forgotten). */
  clearReplay(): void;
}

export function createOutputSink(opts: OutputOptions, emit: (c: Chunk) => void): OutputSink {
  let seq = 0;
  let pending: { stream: StreamName; parts: Buffer[]; size: number } | null = null;
  let timer: NodeJS.Timeout | null = null;
  const ring: Chunk[] = [];
  let ringBytes = 0;

  const send = (stream: StreamName, data: Buffer) => {
    const c = { seq: seq++, stream, data };
    ring.push(c);
    ringBytes += data.length;
    while (ringBytes > opts.replayBytes && ring.length > 1) {
      ringBytes -= (ring.shift() as Chunk).data.length;
    }
    emit(c);
  };

  const flush = () => {
    if (timer) clearTimeout(timer);
    timer = null;
    if (!pending) return;
    const { stream, parts } = pending;
    pending = null;
    const all = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    for (let off = 0; off < all.length; off += opts.chunkBytes) {
      send(stream, all.subarray(off, off + opts.chunkBytes));
    }
  };

  return {
    write(stream, data) {
      if (data.length === 0) return;
      if (pending && pending.stream !== stream) flush();
      pending ??= { stream, parts: [], size: 0 };
      pending.parts.push(data);
      pending.size += data.length;
      if (pending.size >= opts.chunkBytes || opts.coalesceMs <= 0) flush();
      else timer ??= setTimeout(flush, opts.coalesceMs);
    },
    flush,
    get nextSeq() {
      return seq;
    },
    replay(fromSeq) {
      return ring.filter((c) => c.seq >= fromSeq);
    },
    clearReplay() {
      ring.length = 0;
      ringBytes = 0;
    },
  };
}
