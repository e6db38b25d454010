/**
 * mvirtd as a separate process (from source through tsx, or dist/mvirtd.js
 * when built), for tests that kill it with SIGKILL or measure it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminLogin, writeAdminUsers } from './test-admin.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface DaemonProcess {
  child: ChildProcess;
  url: string;
  /** `http://host:port` of --http (null when off); it asks for `admin`'s login. */
  httpUrl: string | null;
  /** The test admin of the users file spawnDaemon wrote (null when the caller gave --users). */
  admin: { username: string; password: string } | null;
  pid: number;
  /** stderr lines so far (JSON logs). */
  logs: string[];
  /** Resolves with the exit once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Host networking off: tests run as root, and a daemon left to its defaults
 * would create the mvirt0 bridge on the machine's own interfaces. spawnDaemon
 * puts these first, so a caller's own --bridge/--network win (the last of a
 * repeated option counts); tests of networking pass them together with a
 * network namespace of their own.
 */
export const NO_HOST_NETWORK = ['--bridge', 'off', '--network', 'none'] as const;

export async function spawnDaemon(
  args: string[],
  /** netns: run inside this network namespace (`ip netns exec`). Controllers use the unix socket. */
  opts: { bundle?: string; readyTimeoutMs?: number; netns?: string } = {},
): Promise<DaemonProcess> {
  // Any free port for --http (daemons run side by side) and no host networking,
  // unless the caller says otherwise later in args.
  // TCP, WebSocket and HTTP controllers always log in: a users file with the
  // test admin, and anonymous controllers on the unix socket (the URL below).
  const ownUsers = args.includes('--users');
  const di = args.indexOf('--data-dir');
  const usersDir =
    di >= 0 && args[di + 1] ? args[di + 1]! : mkdtempSync(path.join(os.tmpdir(), 'mvirt-users-'));
  mkdirSync(usersDir, { recursive: true });
  const login = ownUsers ? [] : ['--users', writeAdminUsers(usersDir), '--allow-anonymous'];
  const all = ['--http', '127.0.0.1:0', ...NO_HOST_NETWORK, ...login, ...args];
  const node =
    opts.bundle && existsSync(opts.bundle)
      ? [opts.bundle, ...all]
      : ['--import', 'tsx', path.join(REPO, 'host/daemon/main.ts'), ...all];
  // `ip netns exec` execs node in place: the pid is the daemon's.
  const [file, argv] = opts.netns
    ? ['ip', ['netns', 'exec', opts.netns, process.execPath, ...node]]
    : [process.execPath, node];
  // Not a node:test child itself, whatever runs this test.
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(file, argv, {
    cwd: REPO,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let resolveReady = (): void => undefined;
  let httpUrl: string | null = null;
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stderr!.on('data', (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        logs.push(line);
        try {
          const j = JSON.parse(line) as {
            msg?: string;
            addresses?: { tcp?: string; unix?: string };
            http?: string | null;
          };
          if (j.msg !== 'mvirtd ready') continue;
          httpUrl = j.http ?? null;
          // Controllers use the unix socket: anonymous there, as the local user.
          if (j.addresses?.unix) resolve(`unix://${j.addresses.unix}`);
          else if (j.addresses?.tcp) resolve(`mqtt://${j.addresses.tcp}`);
        } catch {
          /* not JSON */
        }
      }
    });
    void exited.then(({ code }) =>
      reject(new Error(`mvirtd exited (${code}) before it was ready:\n${logs.join('\n')}`)),
    );
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mvirtd not ready within ${opts.readyTimeoutMs ?? 60_000} ms`));
    }, opts.readyTimeoutMs ?? 60_000);
    t.unref();
    // Cleared once ready: left armed, it SIGKILLed every daemon 60 s after its
    // start, which looked like a daemon that wedged on its second boot.
    resolveReady = () => clearTimeout(t);
  });
  resolveReady();
  return {
    child,
    url,
    httpUrl,
    admin: ownUsers ? null : adminLogin(),
    pid: child.pid!,
    logs,
    exited,
  };
}
