/**
 * The real mvirtd for CLI integration tests: built bundles (dist/), a temporary
 * data folder, controllers on a unix socket only (no TCP port to collide
 * with), and the spawned `mvirt` program.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { NO_HOST_NETWORK } from '../../harness/daemon.js';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Build dist/mvirtd.js and dist/mvirt.js when a direct test run finds them missing. */
export function ensureBuilt(): void {
  if (existsSync(path.join(ROOT, 'dist/mvirtd.js')) && existsSync(path.join(ROOT, 'dist/mvirt.js')))
    return;
  const r = spawnSync(process.execPath, ['scripts/build.mjs', 'host'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  if (r.status !== 0) throw new Error('`node scripts/build.mjs host` failed');
}

export interface RunningDaemon {
  hostId: string;
  dataDir: string;
  socket: string;
  proc: ChildProcess;
  /** Environment that points `mvirt` at this daemon. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/** Start mvirtd and resolve on its 'mvirtd ready' log line (or reject with its stderr). */
export async function startDaemon(
  o: { imagesDir?: string; hostId?: string } = {},
): Promise<RunningDaemon> {
  ensureBuilt();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mvirt-cli-it-'));
  const socket = path.join(dataDir, 'mvirt.sock');
  const hostId = o.hostId ?? 'cli-it';
  const args = [
    path.join(ROOT, 'bin/mvirtd.js'),
    '--data-dir',
    dataDir,
    '--listen',
    'off',
    '--http',
    'off',
    '--unix-socket',
    socket,
    '--host-id',
    hostId,
    ...NO_HOST_NETWORK,
    '--log-level',
    'info',
    ...(o.imagesDir ? ['--images-dir', o.imagesDir] : []),
  ];
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: proc.stderr! });
    lines.on('line', (line) => {
      log.push(line);
      try {
        if ((JSON.parse(line) as { msg?: string }).msg === 'mvirtd ready') resolve();
      } catch {
        // not a pino line: keep it for the error message
      }
    });
    proc.once('exit', (code) =>
      reject(new Error(`mvirtd exited (${code}) before it was ready:\n${log.join('\n')}`)),
    );
  });
  return {
    hostId,
    dataDir,
    socket,
    proc,
    env: { MVIRT_BROKER: socket, MVIRT_HOST: hostId },
    stop: async () => {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the built `mvirt` (bin/mvirt.js) as a user would. */
export function mvirt(
  args: string[],
  env: Record<string, string> = {},
  input?: string,
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(ROOT, 'bin/mvirt.js'), ...args], {
      cwd: ROOT,
      env: { ...process.env, MVIRT_BROKER: '', MVIRT_HOST: '', MVIRT_PREFIX: '', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(input ?? '');
  });
}
