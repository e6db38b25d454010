/**
 * A console's budget (issue 12): how often and how much mvirtd reads from a
 * VM's serial console socket. A guest writing its console a few bytes at a
 * time made the host read about 18,000 times a second, and mvirtd spent
 * 72–98 % of a core on it (harness/flood.ts, console flood, 2 cores, TCG)
 * however the output was published. After each read the socket rests, at
 * least `minGapMs` and as long as the bytes just read take at `bytesPerS`;
 * meanwhile the output waits in the socket and in QEMU, and a guest that
 * keeps writing waits on its serial port, not on mvirtd. Backend-neutral:
 * any console pump can pace its socket with it.
 */
import type { Readable } from 'node:stream';

export interface ConsolePace {
  /** Shortest rest after a read: at most 1000 / minGapMs reads a second. */
  minGapMs: number;
  /** Sustained console bytes a second. */
  bytesPerS: number;
}

/**
 * 20 ms keeps typing and a boot log feeling live (a keystroke's echo within a
 * frame or two) and caps reads at 50 a second; 256 KiB/s is more than any
 * console is read at by a person, and keeps the bounded console log's
 * rewrites (one per half of its 1 MiB) to one every 2 s under a flood.
 */
export const DEFAULT_CONSOLE_PACE: ConsolePace = { minGapMs: 20, bytesPerS: 256 * 1024 };

/** Pace `stream`'s reads; returns a function that stops pacing (the stream is left flowing). */
export function paceReads(stream: Readable, pace: ConsolePace = DEFAULT_CONSOLE_PACE): () => void {
  let timer: NodeJS.Timeout | null = null;
  const onData = (chunk: Buffer): void => {
    if (timer) return; // already resting: this chunk was read before the pause took
    const restMs = Math.max(pace.minGapMs, (chunk.length / pace.bytesPerS) * 1000);
    stream.pause();
    timer = setTimeout(() => {
      timer = null;
      if (!stream.destroyed) stream.resume();
    }, restMs);
  };
  stream.on('data', onData);
  return () => {
    stream.off('data', onData);
    if (timer) clearTimeout(timer);
    timer = null;
    if (!stream.destroyed) stream.resume();
  };
}
