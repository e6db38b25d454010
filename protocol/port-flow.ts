/**
 * Credit-based flow control of one port-forward stream in one direction
 * (protocol/ports.ts), the same on both ends: mvirtd and the agent each run
 * an inbound (what the peer sends) and an outbound (what they send) per
 * stream. Written by hand: it is a few counters, and what it must refuse
 * (more than the credit given, sequence numbers from nowhere) is this
 * protocol's own.
 */
import { PORT_CHUNK_BYTES } from './ports.js';

/** What a receiver makes of a message: `violation` means the peer broke the protocol (close the stream). */
export type Verdict = 'ok' | 'duplicate' | 'violation';

export interface InboundSink {
  /** Bytes in order, to hand on; call `consumed(n)` once they are handed on. */
  write(data: Uint8Array): void;
  /** The peer will send no more (after everything written). */
  end(): void;
  /** Give the peer this much more credit (send a `credit` message). */
  grant(bytes: number): void;
}

export interface Inbound {
  data(seq: number, data: Uint8Array): Verdict;
  end(seq: number): Verdict;
  /** `n` bytes written earlier are handed on: their credit goes back to the peer (in batches). */
  consumed(n: number): void;
  /** Bytes received and not yet handed on (held out of order, or written and not consumed). */
  readonly buffered: number;
}

/**
 * What the peer sends, put in order and bounded: the peer may have at most
 * `window` bytes sent and not granted back; anything beyond, a sequence
 * number the window cannot hold, or data after its end, is a violation.
 * Credit goes back once a quarter of the window is consumed (one message per
 * two chunks rather than one per chunk).
 */
export function createInbound(window: number, sink: InboundSink): Inbound {
  let expected = 0;
  const held = new Map<number, Uint8Array>();
  /** Bytes the peer may still send. */
  let allowance = window;
  let ungranted = 0;
  let endAt: number | null = null;
  let ended = false;

  const maybeEnd = () => {
    if (!ended && endAt !== null && expected === endAt) {
      ended = true;
      sink.end();
    }
  };

  return {
    data(seq, data) {
      if (seq < expected || held.has(seq)) return 'duplicate';
      if (endAt !== null && seq >= endAt) return 'violation';
      // Every chunk holds at least a byte, so the window bounds how far ahead one can be.
      if (data.length < 1 || data.length > allowance || seq - expected >= window)
        return 'violation';
      allowance -= data.length;
      if (seq !== expected) {
        held.set(seq, data);
        return 'ok';
      }
      sink.write(data);
      expected++;
      for (let next = held.get(expected); next; next = held.get(expected)) {
        held.delete(expected);
        sink.write(next);
        expected++;
      }
      maybeEnd();
      return 'ok';
    },
    end(seq) {
      if (endAt !== null) return seq === endAt ? 'duplicate' : 'violation';
      if (seq < expected) return 'violation';
      for (const s of held.keys()) if (s >= seq) return 'violation';
      endAt = seq;
      maybeEnd();
      return 'ok';
    },
    consumed(n) {
      ungranted += n;
      // A peer out of credit has `window` bytes here, so this always comes.
      if (ended || ungranted * 4 < window) return;
      const g = ungranted;
      ungranted = 0;
      allowance += g;
      sink.grant(g);
    },
    get buffered() {
      return window - allowance - ungranted;
    },
  };
}

export interface OutboundSink {
  data(seq: number, data: Uint8Array): void;
  end(seq: number): void;
  /** Stop reading the source (no credit left) … */
  pause(): void;
  /** … and read it again. */
  resume(): void;
}

export interface Outbound {
  /** Bytes read from the source: sent as far as credit goes, the rest kept (and the source paused). */
  push(data: Uint8Array): void;
  /** The source ended: `end` goes out after what is kept. */
  finish(): void;
  /** The peer's credit; a violation when it exceeds the window. */
  grant(bytes: number): Verdict;
  /** Bytes kept waiting for credit. */
  readonly pending: number;
}

/**
 * What this side sends: at most `window` bytes out and not granted back, in
 * chunks of at most PORT_CHUNK_BYTES. Reads are gathered until `defer` runs
 * (the next turn of the event loop), so that a service writing 8 KiB at a
 * time still goes out in full chunks: per-message costs dominate under TCG.
 * What waits is bounded: the source is paused once a chunk's worth waits or
 * the credit is spent, and read again when both have room.
 */
export function createOutbound(
  window: number,
  sink: OutboundSink,
  defer: (fn: () => void) => void = setImmediate,
): Outbound {
  let credit = window;
  let seq = 0;
  const queue: Uint8Array[] = [];
  let queued = 0;
  let finishing = false;
  let finished = false;
  let paused = false;
  let scheduled = false;

  /** Take up to n bytes off the queue, as one array. */
  function take(n: number): Uint8Array {
    const head = queue[0]!;
    if (head.length >= n) {
      if (head.length === n) queue.shift();
      else queue[0] = head.subarray(n);
      queued -= n;
      return head.length === n ? head : head.subarray(0, n);
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const h = queue[0]!;
      const k = Math.min(h.length, n - at);
      out.set(k === h.length ? h : h.subarray(0, k), at);
      if (k === h.length) queue.shift();
      else queue[0] = h.subarray(k);
      at += k;
    }
    queued -= n;
    return out;
  }

  function flow(): void {
    const blocked = queued >= PORT_CHUNK_BYTES || credit === 0;
    if (blocked && !paused) {
      paused = true;
      sink.pause();
    } else if (!blocked && paused && !finishing) {
      paused = false;
      sink.resume();
    }
  }

  function pump(): void {
    scheduled = false;
    while (queued > 0 && credit > 0) {
      const n = Math.min(queued, credit, PORT_CHUNK_BYTES);
      credit -= n;
      sink.data(seq++, take(n));
    }
    if (queued === 0 && finishing && !finished) {
      finished = true;
      sink.end(seq);
    }
    flow();
  }

  function schedule(): void {
    if (scheduled) return;
    scheduled = true;
    defer(pump);
  }

  return {
    push(data) {
      if (data.length === 0 || finishing) return;
      queue.push(data);
      queued += data.length;
      flow();
      schedule();
    },
    finish() {
      finishing = true;
      schedule();
    },
    grant(bytes) {
      if (bytes < 1 || credit + bytes > window) return 'violation';
      credit += bytes;
      schedule();
      return 'ok';
    },
    get pending() {
      return queued;
    },
  };
}
