/**
 * A program on a pseudo-terminal, as a user at a terminal runs it: Node
 * cannot open a pty, so test/support/pty-driver.py (python3's pty support,
 * in Debian's python3) holds the terminal, and this drives it: keys in,
 * the screen out, window resizes, and at the end the exit code and whether
 * the program left the terminal's modes as it found them.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { REPO } from '../../harness/paths.js';

const DRIVER = path.join(REPO, 'test/support/pty-driver.py');
const WAIT_MS = 60_000;

export interface PtyResult {
  code: number | null;
  /** The terminal's modes after the program are the ones before it. */
  restored: boolean;
  screen: string;
}

export interface PtyProcess {
  /** The program's pid (the driver's child). */
  pid(): Promise<number>;
  /** Everything the program wrote to the terminal so far. */
  screen(): string;
  /** Type keys (bytes as a terminal in raw mode sends them: Enter is \r). */
  type(keys: string): void;
  /** Resolves once the screen, from `from` on, matches `re`; with the offset after the match. */
  waitScreen(re: RegExp, from?: number): Promise<number>;
  /** Change the window's size; resolves once the kernel has it (and signalled SIGWINCH). */
  resize(rows: number, cols: number): Promise<void>;
  done: Promise<PtyResult>;
}

export function startOnPty(
  argv: string[],
  o: { rows: number; cols: number; env?: NodeJS.ProcessEnv },
): PtyProcess {
  const p = spawn('python3', [DRIVER, String(o.rows), String(o.cols), '--', ...argv], {
    env: o.env ?? process.env,
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
  });
  const ctl = p.stdio[3] as Readable & Writable;
  let screen = '';
  let control = '';
  let errors = '';
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of [...waiters]) w();
  };
  p.stdout!.on('data', (d: Buffer) => {
    screen += d.toString();
    poke();
  });
  p.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  ctl.on('data', (d: Buffer) => {
    control += d.toString();
    poke();
  });
  let ended = false;
  const done = new Promise<PtyResult>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', () => {
      ended = true;
      poke();
      const code = /^exit (-?\d+)$/m.exec(control);
      if (!code) return reject(new Error(`the pty driver failed: ${errors}`));
      resolve({
        code: Number(code[1]),
        restored: /^termios restored$/m.test(control),
        screen,
      });
    });
  });
  done.catch(() => undefined);
  /** Generous: a guest under TCG on a busy machine answers slowly, but a wait must end. */
  const until = (test: () => boolean, what: () => string): Promise<void> =>
    new Promise((resolve, reject) => {
      const fail = (why: string) => {
        waiters.delete(check);
        clearTimeout(timer);
        reject(new Error(`${what()} ${why}; the screen:\n${JSON.stringify(screen)}\n${errors}`));
      };
      const timer = setTimeout(() => fail(`did not come in ${WAIT_MS} ms`), WAIT_MS);
      const check = () => {
        if (test()) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve();
        } else if (ended) fail('never came');
      };
      waiters.add(check);
      check();
    });
  let resizes = 0;
  return {
    async pid() {
      await until(
        () => /^pid \d+$/m.test(control),
        () => 'pid',
      );
      return Number(/^pid (\d+)$/m.exec(control)![1]);
    },
    screen: () => screen,
    type: (keys) => void p.stdin!.write(keys),
    async waitScreen(re, from = 0) {
      let end = 0;
      await until(
        () => {
          const m = re.exec(screen.slice(from));
          if (m) end = from + m.index + m[0].length;
          return m !== null;
        },
        () => String(re),
      );
      return end;
    },
    async resize(rows, cols) {
      const n = ++resizes;
      ctl.write(`resize ${rows} ${cols}\n`);
      await until(
        () => control.split('\n').filter((l) => l === 'resized').length >= n,
        () => 'resized',
      );
    },
    done,
  };
}
