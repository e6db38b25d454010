/**
 * A long-lived busybox `sh` that runs short system commands for the agent
 * (the clock's `date -s`), so that the agent's ~80 MB Node process forks once
 * instead of at every command. Under TCG a spawn from Node cost ~80 ms of
 * guest CPU apiece; a restored fork's clock step took up to three of them
 * right after `ready`, ~250 ms of CPU that eight forks restoring side by side
 * took from each other. From this shell a command is a fork of a small
 * process.
 *
 * Started at the agent's start (so that a template snapshot already holds
 * it) and again whenever it is gone. One command at a time, a line each on
 * its stdin; it answers each with one line, the command's exit status. Only
 * fixed command words and integers the agent computed are ever written: no
 * value from outside reaches the script.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';

export interface HelperShell {
  /** Run `argv` (each word checked, see safeWord); resolves with its exit status. */
  run(argv: readonly string[]): Promise<number>;
  /** Start the shell now if it is not running (no-op otherwise). */
  warm(): void;
  close(): void;
  /** The shell's pid while it runs. */
  readonly pid: number | undefined;
}

/** Words that need no quoting in sh: letters, digits, and - _ @ . / = : */
const SAFE = /^[A-Za-z0-9_@./=:-]+$/;

type Shell = ChildProcessByStdio<Writable, Readable, null>;

export function createHelperShell(env: NodeJS.ProcessEnv): HelperShell {
  let sh: Shell | null = null;
  let waiting: Array<{ resolve(code: number): void; reject(err: Error): void }> = [];
  let chain: Promise<unknown> = Promise.resolve();

  function fail(err: Error): void {
    const w = waiting;
    waiting = [];
    for (const p of w) p.reject(err);
  }

  function start(): Shell {
    if (sh && sh.exitCode === null && sh.signalCode === null) return sh;
    const child = spawn('sh', ['-s'], { env, stdio: ['pipe', 'pipe', 'ignore'] });
    sh = child;
    child.on('error', (err) => {
      if (sh === child) sh = null;
      fail(new Error(`helper shell: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      if (sh === child) sh = null;
      fail(new Error(`helper shell ended (${code ?? signal})`));
    });
    child.stdin.on('error', () => undefined); // EPIPE: 'exit' says it
    createInterface({ input: child.stdout }).on('line', (line) => {
      const code = Number(line.trim());
      waiting.shift()?.resolve(Number.isInteger(code) ? code : 255);
    });
    return child;
  }

  function once(argv: readonly string[]): Promise<number> {
    const bad = argv.find((w) => !SAFE.test(w));
    if (argv.length === 0 || bad !== undefined)
      return Promise.reject(new Error(`helper shell: refusing word ${JSON.stringify(bad)}`));
    return new Promise<number>((resolve, reject) => {
      const child = start();
      waiting.push({ resolve, reject });
      child.stdin.write(`${argv.join(' ')} >/dev/null 2>&1; echo $?\n`);
    });
  }

  return {
    run(argv) {
      const r = chain.then(() => once(argv));
      chain = r.catch(() => undefined);
      return r;
    },
    warm() {
      try {
        start();
      } catch {
        // spawn itself threw (no sh): run() says so when it is needed
      }
    },
    close() {
      sh?.stdin.end();
      sh = null;
    },
    get pid() {
      return sh?.pid;
    },
  };
}
