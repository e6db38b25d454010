/** An in-memory Io for running the CLI in-process: captured output, a scripted stdin, signals on demand. */
import { EventEmitter } from 'node:events';
import { PassThrough, Writable } from 'node:stream';
import type { Io, TtyIn, TtyOut } from '../../host/cli/io.js';

export interface MemoryIo extends Io {
  stdin: PassThrough & TtyIn;
  out(): string;
  /** stdout as the bytes written. */
  outBytes(): Buffer;
  errText(): string;
  /** Resolve once stdout contains `s` (or satisfies it, given a predicate). */
  waitOut(s: string | ((out: string) => boolean)): Promise<void>;
  /** Resolve once stderr contains `s`. */
  waitErr(s: string): Promise<void>;
  signal(sig?: NodeJS.Signals): void;
  rawModes: boolean[];
  /** Every write to stdout and stderr, in the order they happened. */
  writes: ['out' | 'err', string][];
}

function sink(onWrite: (text: string) => void = () => {}): {
  w: Writable;
  text: () => string;
  chunks: Buffer[];
  events: EventEmitter;
} {
  const chunks: Buffer[] = [];
  const events = new EventEmitter();
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      onWrite(Buffer.from(chunk).toString('utf8'));
      events.emit('data');
      cb();
    },
  });
  return { w, chunks, events, text: () => Buffer.concat(chunks).toString('utf8') };
}

function waitText(
  k: ReturnType<typeof sink>,
  s: string | ((text: string) => boolean),
): Promise<void> {
  const done = typeof s === 'string' ? (t: string) => t.includes(s) : s;
  return new Promise<void>((resolve) => {
    const check = (): void => {
      if (!done(k.text())) return;
      k.events.removeListener('data', check);
      resolve();
    };
    k.events.on('data', check);
    check();
  });
}

export function memoryIo(
  o: { env?: Record<string, string>; tty?: boolean; errTty?: boolean; now?: number } = {},
): MemoryIo {
  const writes: MemoryIo['writes'] = [];
  const stdout = sink((t) => writes.push(['out', t]));
  const stderr = sink((t) => writes.push(['err', t]));
  if (o.errTty) (stderr.w as TtyOut).isTTY = true;
  const signals = new EventEmitter();
  const rawModes: boolean[] = [];
  const stdin = new PassThrough() as PassThrough & TtyIn;
  if (o.tty) {
    stdin.isTTY = true;
    stdin.setRawMode = (raw: boolean) => rawModes.push(raw);
  }
  return {
    stdout: stdout.w,
    stderr: stderr.w,
    stdin,
    env: o.env ?? {},
    now: () => o.now ?? Date.now(),
    onSignal: (cb) => {
      signals.on('signal', cb);
      return () => void signals.removeListener('signal', cb);
    },
    out: stdout.text,
    outBytes: () => Buffer.concat(stdout.chunks),
    errText: stderr.text,
    waitOut: (s) => waitText(stdout, s),
    waitErr: (s) => waitText(stderr, s),
    signal: (sig = 'SIGINT') => void signals.emit('signal', sig),
    rawModes,
    writes,
  };
}
