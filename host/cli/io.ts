/**
 * What a command touches of the outside world, injected so unit tests can run
 * the whole CLI in-process with captured streams and a fake environment.
 */
import type { Readable, Writable } from 'node:stream';

export interface TtyIn extends Readable {
  isTTY?: boolean;
  setRawMode?(raw: boolean): unknown;
}

export interface TtyOut extends Writable {
  isTTY?: boolean;
  /** A terminal's size (it emits 'resize' when the size changes). */
  columns?: number;
  rows?: number;
}

export interface Io {
  stdout: TtyOut;
  stderr: TtyOut;
  stdin: TtyIn;
  env: Record<string, string | undefined>;
  now(): number;
  /** Run `cb` on SIGINT/SIGTERM/SIGHUP; returns a function that removes it. */
  onSignal(cb: (signal: NodeJS.Signals) => void): () => void;
}

let stdinUsed = false;

/**
 * The process's streams. `process.stdin` is made on first use, and making it
 * costs: 3.5–8 ms for a file or /dev/null (an fs.ReadStream), more for a
 * terminal or a pipe (tty or net loaded), measured on the 2-core dev machine,
 * Node 20; so it is opened only by the commands that read it.
 */
export function processIo(): Io {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    get stdin() {
      stdinUsed = true;
      return process.stdin;
    },
    env: process.env,
    now: () => Date.now(),
    onSignal: (cb) => {
      const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
      for (const s of signals) process.on(s, cb);
      return () => {
        for (const s of signals) process.removeListener(s, cb);
      };
    },
  };
}

/** Did a command open `process.stdin` through processIo (and may have made the terminal raw)? */
export const stdinOpened = (): boolean => stdinUsed;

export const write = (w: Writable, s: string): void => void w.write(s);
