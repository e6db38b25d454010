/**
 * Job output in order and exactly once: chunks carry sequence numbers 0, 1,
 * 2, … and may come twice or out of order (the live topic and job.logs both
 * deliver them; MQTT does not promise that a retry keeps the order). The
 * sequencer emits each one once, in order, and holds those that come ahead
 * of a gap until the gap is filled or known to be lost (skipTo).
 */
import type { OutputChunk } from '../../protocol/records.js';

export interface Sequencer {
  /** The next sequence number to print. */
  readonly next: number;
  /** Chunks held back behind a gap. */
  readonly held: number;
  /** Offer a chunk from any source: printed (with what it unblocks), held, or a duplicate ignored. */
  add(chunk: OutputChunk): void;
  /** Nothing below `seq` can come any more: print what is held below it; returns how many were skipped. */
  skipTo(seq: number): number;
}

export function sequencer(emit: (chunk: OutputChunk) => void, start = 0): Sequencer {
  let next = start;
  const held = new Map<number, OutputChunk>();
  const flush = (): void => {
    for (let c = held.get(next); c !== undefined; c = held.get(next)) {
      held.delete(next);
      next++;
      emit(c);
    }
  };
  return {
    get next() {
      return next;
    },
    get held() {
      return held.size;
    },
    add(chunk) {
      if (chunk.seq < next || held.has(chunk.seq)) return;
      held.set(chunk.seq, chunk);
      flush();
    },
    skipTo(seq) {
      let skipped = 0;
      const below = [...held.keys()].filter((k) => k < seq).sort((a, b) => a - b);
      for (const k of below) {
        skipped += k - next;
        next = k + 1;
        const c = held.get(k)!;
        held.delete(k);
        emit(c);
      }
      if (seq > next) {
        skipped += seq - next;
        next = seq;
      }
      flush();
      return skipped;
    },
  };
}
