/**
 * Jobs started by mvirt-launch (initramfs/src/mvirt-launch.c, which says why
 * and gives the protocol) instead of a Node spawn, which forks the agent.
 *
 * The launcher is spawned once (the one fork of the agent it costs) with its
 * stdin and stdout as the request and reply streams, and again after it died.
 * For each job it makes the pipes and forks; the agent opens the launcher's
 * ends as /proc/<launcher>/fd/<n> (Linux opens the same pipe), wraps them as
 * sockets (libuv polls a pipe as it polls a socketpair: the same streams as a
 * ChildProcess's), then tells the launcher to close its copies, so that a
 * job's end of output reads as EOF. The Proc given to the core behaves as a
 * ChildProcess does for it: 'spawn' with pid and stdio, 'error' (a spawn
 * error, ENOENT and EACCES made as Node makes them), 'exit' (code, signal;
 * stdin destroyed), 'close' once exited and stdout and stderr have closed.
 *
 * Measured 2026-12-07 on the dev machine (2 cores, load 8.8, Node 20, an
 * 80 MB buffer in the spawning process as in the agent): `/bin/true` from
 * spawn to 'close' took 1.8 ms (median of 30) through the launcher against
 * 11.7-19.4 ms by Node's spawn, side by side in one run; in the guest under
 * TCG, see bench/jobs.ts.
 *
 * Never loses a job: a request the launcher could not take, or one in flight
 * when it died, is spawned by Node instead (the fallback each caller gives).
 * A job it had started when it died goes on running (init reaps it), but its
 * exit status went with the launcher: its exit is reported (null, null) once
 * its pid is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { closeSync, constants as fsc, existsSync, openSync } from 'node:fs';
import { Socket } from 'node:net';
import os from 'node:os';
import { Writable } from 'node:stream';
import { getSystemErrorName } from 'node:util';
import type { Proc, SpawnRequest } from './types.js';

export const LAUNCH_HELPER = '/usr/libexec/mvirt/mvirt-launch';

/** Consecutive launchers that died before starting a job: then jobs are Node's alone. */
const MAX_FAILED_STARTS = 3;
/** How often a job orphaned by a dead launcher is looked for (rare: the launcher died). */
const ORPHAN_POLL_MS = 250;

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(os.constants.signals).map(([k, v]) => [v, k as NodeJS.Signals]),
);

/** The error Node's spawn gives for a command that cannot be run (errno > 0). */
export function spawnError(file: string, args: readonly string[], errno: number): Error {
  let code: string;
  try {
    code = getSystemErrorName(-errno);
  } catch {
    code = `Unknown system error -${errno}`;
  }
  return Object.assign(new Error(`spawn ${file} ${code}`), {
    errno: -errno,
    code,
    syscall: `spawn ${file}`,
    path: file,
    spawnargs: [...args],
  });
}

/** A job's process as the core sees it, whoever started it. */
class LaunchedProc extends EventEmitter implements Proc {
  pid: number | undefined = undefined;
  stdin: Writable | null = null;
  stdout: Socket | null = null;
  stderr: Socket | null = null;
  private closesNeeded = 1; // the exit, then each output stream

  /** Started by the launcher: its pipes, opened by the agent. */
  started(pid: number, stdin: Writable, stdout: Socket, stderr: Socket): void {
    this.pid = pid;
    this.stdin = stdin;
    this.stdout = stdout;
    this.stderr = stderr;
    for (const s of [stdout, stderr]) {
      this.closesNeeded++;
      s.once('close', () => this.maybeClose());
    }
    this.emit('spawn');
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    // As Node's ChildProcess: a stdin nobody reads any more is done with.
    this.stdin?.destroy();
    this.emit('exit', code, signal);
    // As Node's flushStdio: output nobody reads is drained, so that it ends.
    for (const s of [this.stdout, this.stderr])
      if (s?.readableFlowing === null && !s.destroyed) s.resume();
    this.maybeClose();
  }

  private maybeClose(): void {
    if (--this.closesNeeded === 0) this.emit('close');
  }

  /** Spawned by Node after all: its events and streams become ours. */
  adopt(child: ChildProcess): void {
    this.stdin = child.stdin;
    this.stdout = child.stdout as Socket | null;
    this.stderr = child.stderr as Socket | null;
    child.on('spawn', () => {
      this.pid = child.pid;
      this.emit('spawn');
    });
    child.on('error', (err) => this.emit('error', err));
    child.on('exit', (code, signal) => this.emit('exit', code, signal));
    child.on('close', () => this.emit('close'));
  }
}

/** A stdin the job closed before the agent opened it (ENXIO): writes fail as on a closed pipe. */
function closedStdin(): Writable {
  return new Writable({
    write(_chunk, _enc, cb) {
      cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE', errno: -32, syscall: 'write' }));
    },
  });
}

interface Pending {
  req: SpawnRequest;
  proc: LaunchedProc;
  fallback: () => ChildProcess;
}

export interface Launcher {
  /** Start a job (through the launcher when it can, else `fallback`). */
  spawn(req: SpawnRequest, fallback: () => ChildProcess): Proc;
  /** Start the launcher now if it is not running (off a job's path). */
  warm(): void;
  /** The running launcher's pid (tests). */
  pid(): number | undefined;
}

function frame(body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  return Buffer.concat([head, body]);
}

function closeFrame(id: number): Buffer {
  const b = Buffer.alloc(5);
  b.write('C', 0, 'latin1');
  b.writeUInt32LE(id, 1);
  return frame(b);
}

function spawnFrame(id: number, req: SpawnRequest): Buffer {
  const env = Object.entries(req.env).map(([k, v]) => `${k}=${v}`);
  const head = Buffer.alloc(13);
  head.write('S', 0, 'latin1');
  head.writeUInt32LE(id, 1);
  head.writeUInt32LE(req.argv.length, 5);
  head.writeUInt32LE(env.length, 9);
  const strings = [req.cwd ?? '', req.enterGroup ?? '', ...req.argv, ...env];
  return frame(Buffer.concat([head, Buffer.from(strings.map((s) => `${s}\0`).join(''))]));
}

/**
 * The launcher at `helper` (one per path and process: the agent has one;
 * tests' fake guests share theirs). Null when the helper is not there.
 */
export function launcherAt(helper: string): Launcher | null {
  let l = launchers.get(helper);
  if (l === undefined) {
    l = existsSync(helper) ? createLauncher(helper) : null;
    launchers.set(helper, l);
  }
  return l;
}
const launchers = new Map<string, Launcher | null>();

export function createLauncher(helper: string): Launcher {
  let child: ChildProcess | null = null;
  let failedStarts = 0;
  let nextId = 1;
  let pending = new Map<number, Pending>();
  let running = new Map<number, LaunchedProc>();
  let buf: Buffer = Buffer.alloc(0);

  /** Ref the launcher's replies while a job of its own waits for one. */
  const hold = () => {
    const s = child?.stdout as Socket | undefined;
    if (pending.size + running.size > 0) s?.ref();
    else s?.unref();
  };

  const start = (): ChildProcess | null => {
    if (failedStarts >= MAX_FAILED_STARTS) return null;
    let c: ChildProcess;
    try {
      c = spawn(helper, [], { stdio: ['pipe', 'pipe', 'inherit'], env: {} });
    } catch {
      failedStarts++;
      return null;
    }
    child = c;
    buf = Buffer.alloc(0);
    // The launcher keeps the agent (or a test's process) alive only while a
    // job of its own is to be reported, as a ChildProcess does (hold below);
    // it ends with the agent's EOF.
    c.unref();
    (c.stdin as Socket).unref();
    (c.stdout as Socket).unref();
    c.stdin!.on('error', () => undefined);
    c.stdout!.on('data', (d: Buffer) => onData(c, d));
    // Gone once its replies are all read (its stdout closed; 'exit' may come
    // first, with a reply still unread), or when it could not be spawned.
    c.once('error', () => died(c));
    c.stdout!.once('close', () => died(c));
    return c;
  };

  /** A launcher gone: its requests are Node's, its running jobs watched by pid. */
  const died = (c: ChildProcess) => {
    if (child !== c) return;
    child = null;
    c.stdin?.destroy();
    c.stdout?.destroy();
    failedStarts++;
    const lost = pending;
    const orphans = running;
    pending = new Map();
    running = new Map();
    for (const p of lost.values()) p.proc.adopt(p.fallback());
    for (const [pid, proc] of orphans) watchOrphan(pid, proc);
  };

  const watchOrphan = (pid: number, proc: LaunchedProc) => {
    const t = setInterval(() => {
      if (existsSync(`/proc/${pid}`)) return;
      clearInterval(t);
      proc.exited(null, null);
    }, ORPHAN_POLL_MS);
  };

  const onData = (c: ChildProcess, d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    while (buf.length >= 4) {
      const n = buf.readUInt32LE(0);
      if (buf.length < 4 + n) break;
      const body = buf.subarray(4, 4 + n);
      buf = buf.subarray(4 + n);
      reply(c, body);
    }
    hold();
  };

  const reply = (c: ChildProcess, b: Buffer) => {
    const type = String.fromCharCode(b[0] ?? 0);
    if (type === 'X' && b.length === 9) {
      const pid = b.readUInt32LE(1);
      const status = b.readUInt32LE(5);
      const proc = running.get(pid);
      if (!proc) return;
      running.delete(pid);
      const sig = status & 0x7f;
      if (sig === 0) proc.exited((status >> 8) & 0xff, null);
      else proc.exited(null, SIGNAL_NAMES.get(sig) ?? null);
      return;
    }
    const id = b.length >= 5 ? b.readUInt32LE(1) : 0;
    const p = pending.get(id);
    if (!p) return;
    pending.delete(id);
    if (type === 'E' && b.length === 10) {
      const errno = b.readUInt32LE(5);
      // 'x': the job's own setup or exec failed, a spawn error as Node's.
      if (b[9] === 'x'.charCodeAt(0)) {
        const [file, ...args] = p.req.argv as [string, ...string[]];
        p.proc.emit('error', spawnError(file, args, errno));
      } else p.proc.adopt(p.fallback());
      return;
    }
    if (type !== 'P' || b.length !== 21) return void p.proc.adopt(p.fallback());
    const pid = b.readUInt32LE(5);
    const fds = [9, 13, 17].map((o) => `/proc/${c.pid}/fd/${b.readUInt32LE(o)}`) as [
      string,
      string,
      string,
    ];
    // The three opened first, then wrapped: a failure leaves nothing half-owned.
    let fd: [number | null, number, number];
    try {
      let stdin: number | null = null;
      try {
        stdin = openSync(fds[0], fsc.O_WRONLY | fsc.O_NONBLOCK);
      } catch (err) {
        // ENXIO: no reader: the job closed its stdin already.
        if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
      }
      const opened: number[] = stdin === null ? [] : [stdin];
      try {
        opened.push(openSync(fds[1], fsc.O_RDONLY | fsc.O_NONBLOCK));
        opened.push(openSync(fds[2], fsc.O_RDONLY | fsc.O_NONBLOCK));
      } catch (err) {
        for (const n of opened) closeSync(n);
        throw err;
      }
      fd = [stdin, opened.at(-2)!, opened.at(-1)!];
    } catch (err) {
      // Started, but its pipes cannot be had (the launcher died meanwhile):
      // it must not run unseen. A spawn error, never a second run.
      c.stdin!.write(closeFrame(id));
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      p.proc.emit('error', new Error(`cannot open the job's pipes: ${(err as Error).message}`));
      return;
    }
    c.stdin!.write(closeFrame(id));
    failedStarts = 0;
    running.set(pid, p.proc);
    p.proc.started(
      pid,
      fd[0] === null ? closedStdin() : new Socket({ fd: fd[0], readable: false, writable: true }),
      new Socket({ fd: fd[1], readable: true, writable: false }),
      new Socket({ fd: fd[2], readable: true, writable: false }),
    );
  };

  return {
    spawn(req, fallback) {
      const proc = new LaunchedProc();
      const c = child ?? start();
      if (!c?.stdin?.writable) {
        proc.adopt(fallback());
        return proc;
      }
      const id = nextId;
      nextId = nextId >= 0xffffffff ? 1 : nextId + 1;
      pending.set(id, { req, proc, fallback });
      c.stdin.write(spawnFrame(id, req));
      hold();
      return proc;
    },
    warm() {
      if (!child) start();
    },
    pid: () => child?.pid,
  };
}
