/**
 * The `mvirt` program as a user runs it: the built bin/mvirt.js (built first
 * when missing) in its own process, pointed at a daemon through connect.ts,
 * with its output collected, and a handle to signal it (Ctrl-C is SIGINT).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { ensureBuilt } from '../../harness/build.js';
import { cliEnv, type DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** stdout as the bytes written. */
  stdoutBytes: Buffer;
  stderr: string;
}

export interface CliProcess {
  child: ChildProcess;
  /** Output so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout contains `text` (rejects if the process ends first). */
  waitOut(text: string): Promise<void>;
  done: Promise<CliResult>;
}

/** Start `mvirt ARGS` against `d` (or with only `env`, for tests of how it finds a daemon). */
export function startMvirt(
  args: string[],
  o: { daemon?: DaemonAddress; env?: Record<string, string>; input?: string | Buffer } = {},
): CliProcess {
  ensureBuilt();
  const p = spawn(process.execPath, [path.join(REPO, 'bin/mvirt.js'), ...args], {
    cwd: REPO,
    env: {
      ...process.env,
      MVIRT_BROKER: '',
      MVIRT_HOST: '',
      MVIRT_PREFIX: '',
      ...(o.daemon ? cliEnv(o.daemon) : {}),
      ...o.env,
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  const outBytes: Buffer[] = [];
  let stderr = '';
  const waiters = new Set<() => void>();
  p.stdout.on('data', (d: Buffer) => {
    outBytes.push(d);
    stdout += d.toString();
    for (const w of [...waiters]) w();
  });
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<CliResult>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code, signal) =>
      resolve({ code, signal, stdout, stdoutBytes: Buffer.concat(outBytes), stderr }),
    );
  });
  p.stdin.end(o.input ?? '');
  return {
    child: p,
    stdout: () => stdout,
    stderr: () => stderr,
    waitOut: (text) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (!stdout.includes(text)) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
        void done.then((r) => {
          if (!stdout.includes(text))
            reject(new Error(`mvirt ended (${r.code}) before printing ${text}:\n${r.stderr}`));
        });
      }),
    done,
  };
}

/** Run `mvirt ARGS` to its end. */
export function mvirt(
  args: string[],
  o: { daemon?: DaemonAddress; env?: Record<string, string>; input?: string | Buffer } = {},
): Promise<CliResult> {
  return startMvirt(args, o).done;
}
