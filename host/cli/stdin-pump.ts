/**
 * `mvirt run`'s stdin, streamed to the job with job.stdin: bytes as they are
 * (binary-safe), in chunks of at most JOB_STDIN_CHUNK_BYTES, one chunk on the
 * way at a time. mvirtd answers each once the job's stdin pipe has taken it,
 * so a job that reads slowly slows the reading here, and input of any size
 * passes with memory bounded by one chunk. The last call carries `eof`; an
 * answer `open: false` (the job closed its stdin or ended) stops the reading.
 */
import type { TtyIn } from './io.js';

export interface StdinPump {
  /** Bytes the job was sent; whether the job stopped taking them first. */
  done: Promise<{ bytes: number; closedByJob: boolean }>;
  /** Stop reading (the job ended): `done` resolves, nothing more is sent. */
  stop(): void;
}

export function pumpStdin(o: {
  input: TtyIn;
  chunkBytes: number;
  /** One job.stdin call: resolves with `open`. */
  send(data: Buffer, eof: boolean): Promise<boolean>;
}): StdinPump {
  let stopped = false;
  const done = (async () => {
    let pending: Buffer[] = [];
    let size = 0;
    let bytes = 0;
    const take = (n: number): Buffer => {
      const all = Buffer.concat(pending);
      pending = n < all.length ? [all.subarray(n)] : [];
      size = all.length - Math.min(n, all.length);
      return all.subarray(0, n);
    };
    const send = async (data: Buffer, eof: boolean): Promise<boolean> => {
      const open = await o.send(data, eof);
      bytes += data.length;
      return open;
    };
    try {
      for await (const chunk of o.input) {
        if (stopped) break;
        const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
        pending.push(b);
        size += b.length;
        while (size >= o.chunkBytes && !stopped) {
          if (!(await send(take(o.chunkBytes), false))) return { bytes, closedByJob: true };
        }
      }
      if (!stopped) await send(take(size), true);
    } catch (err) {
      // After stop(): the input destroyed to end a read that waits, or a call
      // cut off by the client closing. Neither is an error any more.
      if (!stopped) throw err;
    }
    return { bytes, closedByJob: false };
  })();
  return {
    done,
    stop() {
      if (stopped) return;
      stopped = true;
      // A read waiting on a pipe that stays open would keep mvirt alive.
      o.input.destroy();
    },
  };
}

/**
 * Whether a stdin pipe has anything at all: waits for its first bytes (put
 * back for the pump) or its end. `mvirt run --detach` asks, so that an empty
 * pipe does not hold it until the job runs just to close the job's stdin.
 */
export async function hasInput(input: TtyIn): Promise<boolean> {
  for (;;) {
    const chunk = input.read() as Buffer | string | null;
    if (chunk !== null) {
      input.unshift(chunk);
      return true;
    }
    if (input.readableEnded) return false;
    const ended = await new Promise<boolean>((resolve) => {
      const onReadable = () => done(false);
      const onEnd = () => done(true);
      const done = (end: boolean) => {
        input.off('readable', onReadable);
        input.off('end', onEnd);
        resolve(end);
      };
      input.once('readable', onReadable);
      input.once('end', onEnd);
    });
    if (ended) return false;
  }
}

/**
 * Keystrokes (a terminal, `mvirt exec -i`): each read is sent at once, not
 * held for a full chunk; one call on the way at a time, and what is typed
 * meanwhile goes with the next (at most `chunkBytes` a call, in order). The
 * terminal is paused while more than a chunk waits (a large paste).
 */
export function pumpKeys(o: {
  input: TtyIn;
  chunkBytes: number;
  send(data: Buffer, eof: boolean): Promise<boolean>;
}): StdinPump {
  let stopped = false;
  let ended = false;
  let pending: Buffer[] = [];
  let size = 0;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (chunk: Buffer | string) => {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
    pending.push(b);
    size += b.length;
    if (size > o.chunkBytes) o.input.pause();
    poke();
  };
  const onEnd = () => {
    ended = true;
    poke();
  };
  o.input.on('data', onData);
  o.input.once('end', onEnd);
  o.input.resume();
  const done = (async () => {
    let bytes = 0;
    try {
      for (;;) {
        while (size === 0 && !ended && !stopped) await new Promise<void>((r) => (wake = r));
        if (stopped) break;
        const all = Buffer.concat(pending);
        const data = all.subarray(0, o.chunkBytes);
        pending = data.length < all.length ? [all.subarray(data.length)] : [];
        size = all.length - data.length;
        if (size <= o.chunkBytes) o.input.resume();
        const eof = ended && size === 0;
        const open = await o.send(data, eof);
        bytes += data.length;
        if (!open) return { bytes, closedByJob: true };
        if (eof) break;
      }
    } catch (err) {
      if (!stopped) throw err;
    } finally {
      o.input.off('data', onData);
      o.input.off('end', onEnd);
    }
    return { bytes, closedByJob: false };
  })();
  return {
    done,
    stop() {
      if (stopped) return;
      stopped = true;
      o.input.pause();
      poke();
    },
  };
}
