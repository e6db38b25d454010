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

/** Bytes read and not sent yet, taken in order, at most `n` at a time. */
function pendingBytes() {
  let parts: Buffer[] = [];
  let size = 0;
  return {
    get size(): number {
      return size;
    },
    push(b: Buffer): void {
      parts.push(b);
      size += b.length;
    },
    take(n: number): Buffer {
      const all = Buffer.concat(parts);
      const data = all.subarray(0, n);
      parts = data.length < all.length ? [all.subarray(data.length)] : [];
      size = all.length - data.length;
      return data;
    },
  };
}

/** What a pump reads from and sends to. */
interface PumpIo {
  input: TtyIn;
  chunkBytes: number;
  /** One job.stdin call: resolves with `open`. */
  send(data: Buffer, eof: boolean): Promise<boolean>;
}

/**
 * A pump around `body`, which sends (counted) until the input ends (false)
 * or the job closes its stdin (true). stop() marks it stopped and calls
 * `halt` to end a wait on the input; whatever fails after that (the input
 * destroyed under a read, a call cut off by the client closing) is no error
 * any more. `cleanup` runs once the body is done.
 */
function makePump(
  o: PumpIo,
  body: (send: PumpIo['send'], stopped: () => boolean) => Promise<boolean>,
  halt: () => void,
  cleanup: () => void = () => undefined,
): StdinPump {
  let stopped = false;
  let bytes = 0;
  const send = async (data: Buffer, eof: boolean): Promise<boolean> => {
    const open = await o.send(data, eof);
    bytes += data.length;
    return open;
  };
  const done = (async () => {
    try {
      if (await body(send, () => stopped)) return { bytes, closedByJob: true };
    } catch (err) {
      if (!stopped) throw err;
    } finally {
      cleanup();
    }
    return { bytes, closedByJob: false };
  })();
  return {
    done,
    stop() {
      if (stopped) return;
      stopped = true;
      halt();
    },
  };
}

export function pumpStdin(o: PumpIo): StdinPump {
  const pending = pendingBytes();
  return makePump(
    o,
    async (send, stopped) => {
      for await (const chunk of o.input) {
        if (stopped()) break;
        pending.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk)));
        while (pending.size >= o.chunkBytes && !stopped())
          if (!(await send(pending.take(o.chunkBytes), false))) return true;
      }
      if (!stopped()) await send(pending.take(pending.size), true);
      return false;
    },
    // A read waiting on a pipe that stays open would keep mvirt alive.
    () => o.input.destroy(),
  );
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
export function pumpKeys(o: PumpIo): StdinPump {
  let ended = false;
  const pending = pendingBytes();
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (chunk: Buffer | string) => {
    pending.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    if (pending.size > o.chunkBytes) o.input.pause();
    poke();
  };
  const onEnd = () => {
    ended = true;
    poke();
  };
  o.input.on('data', onData);
  o.input.once('end', onEnd);
  o.input.resume();
  return makePump(
    o,
    async (send, stopped) => {
      for (;;) {
        while (pending.size === 0 && !ended && !stopped())
          await new Promise<void>((r) => (wake = r));
        if (stopped()) return false;
        const data = pending.take(o.chunkBytes);
        if (pending.size <= o.chunkBytes) o.input.resume();
        const eof = ended && pending.size === 0;
        if (!(await send(data, eof))) return true;
        if (eof) return false;
      }
    },
    () => {
      o.input.pause();
      poke();
    },
    () => {
      o.input.off('data', onData);
      o.input.off('end', onEnd);
    },
  );
}
