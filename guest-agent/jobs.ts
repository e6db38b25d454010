/**
 * Jobs: exec requests run in their own process group, streamed as `output`
 * chunks, ended by one `exit` record. A job id is remembered after it ends so
 * that a resent exec never runs twice (bounded: the oldest finished jobs are
 * forgotten first).
 */
import type { Exec, Exit, Hello, Signal, Stdin } from '../protocol/agent.js';
import type { Resize } from '../protocol/tty.js';
import { AgentError } from './errors.js';
import type { Outbox } from './outbox.js';
import { createOutputSink, type Chunk, type OutputSink } from './output.js';
import type { JobGroup, LimitedJobGroup, Platform, Proc } from './platform/types.js';
import { forgetTty, resizeTty, ttyArgv } from './tty.js';

export interface JobOptions {
  /** SIGTERM → SIGKILL escalation delay for timeouts and cancels. */
  killGraceMs: number;
  /** After the main process exits, how long to wait for its pipes to close
   *  (a background grandchild may hold them open forever). */
  pipeGraceMs: number;
  chunkBytes: number;
  coalesceMs: number;
  /** Recent output kept per job for replay (`fromSeq`). */
  replayBytes: number;
  /** Finished jobs remembered for dedup and replay. */
  keepFinished: number;
  /**
   * A tty job's stdin is answered after the output the input caused (its
   * echo) has gone out, or after this long without output (input that
   * echoes nothing: a password, a program that does not draw).
   */
  echoWaitMs: number;
}

export const DEFAULT_JOB_OPTIONS: JobOptions = {
  killGraceMs: 3000,
  pipeGraceMs: 2000,
  // 128 KiB chunks: under TCG the per-message cost (CBOR, MQTT, host
  // storage) dominates a flood of output; 64 KiB chunks halved the rate.
  chunkBytes: 128 * 1024,
  coalesceMs: 5,
  replayBytes: 512 * 1024,
  keepFinished: 16,
  // Above a keystroke's echo under TCG on a loaded host (mvirt-pty and the
  // shell took 1–12 ms from the agent's write to its read, bench/tty.ts at
  // load 3–10); an echo later than this finds its reply gone ahead, as
  // before. Keys without echo wait this long for their reply (the CLI
  // gathers keys typed meanwhile into the next job.stdin).
  echoWaitMs: 20,
};

export interface JobSinks {
  output(c: Chunk & { jobId: string }): void;
  exit(e: Exit): void;
  log(level: 'debug' | 'info' | 'warn' | 'error', message: string): void;
}

interface Job {
  readonly id: string;
  proc: Proc | null;
  pid: number | null;
  out: OutputSink;
  startedAt: number;
  exit: Exit | null;
  exitStatus: { code: number | null; signal: NodeJS.Signals | null } | null;
  timedOut: boolean;
  killedByUs: boolean;
  /** Fallback OOM attribution where the platform has no job groups. */
  oomBefore: number | null;
  group: Promise<JobGroup | null> | null;
  timers: Set<NodeJS.Timeout>;
  killTimer: NodeJS.Timeout | null;
  /** Ended by drop(): nothing more of it is reported. */
  dropped: boolean;
  /** Run under a pty (tty.ts); its resizes, one after the other. */
  tty: boolean;
  resizing: Promise<unknown>;
  /** Its stdin replies waiting for its echo (stdin), and their time limit. */
  echo: { waiting: (() => void)[]; timer: NodeJS.Timeout | null };
}

export interface Jobs {
  /** Start (or recognise a duplicate of) a job; resolves with the reply's result. */
  exec(msg: Exec): Promise<{ pid: number | null; duplicate?: true }>;
  /** Resolves once the pipe took the bytes: whether it takes more. */
  stdin(msg: Stdin): { open: boolean } | Promise<{ open: boolean }>;
  signal(msg: Signal): { running: boolean };
  /** A tty job's new window size; false: it has ended, or has no tty. */
  resize(msg: Resize): Promise<{ running: boolean }>;
  /** For hello: what we still know about. */
  known(): Hello['jobs'];
  /** Kill every running job's process group (agent shutdown). */
  killAll(): void;
  /**
   * Kill every running job and forget every job, reporting nothing more of
   * them (a restored VM's jobs belong to its source VM's records). Returns
   * how many were running.
   */
  drop(): number;
}

export function createJobs(
  platform: Platform,
  outbox: Outbox,
  sinks: JobSinks,
  opts: JobOptions = DEFAULT_JOB_OPTIONS,
): Jobs {
  const jobs = new Map<string, Job>();
  const finishedOrder: string[] = [];

  const streams = (j: Job) => [j.proc?.stdout, j.proc?.stderr].filter((s) => s != null);

  // Backpressure: while the outbox holds too much output, stop reading pipes.
  outbox.onFlow((paused) => {
    for (const j of jobs.values()) {
      if (j.exit) continue;
      for (const s of streams(j)) {
        if (paused) s.pause();
        else s.resume();
      }
    }
  });

  const later = (j: Job, ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      j.timers.delete(t);
      fn();
    }, ms);
    j.timers.add(t);
  };

  const oomKills = async (): Promise<number | null> => {
    const text = await platform.readText('/proc/vmstat');
    const m = text && /^oom_kill (\d+)$/m.exec(text);
    return m ? Number(m[1]) : null;
  };

  /** Send the stdin replies that wait for a tty job's echo. */
  const releaseEcho = (j: Job) => {
    if (j.echo.timer) clearTimeout(j.echo.timer);
    j.echo.timer = null;
    const waiting = j.echo.waiting;
    j.echo.waiting = [];
    for (const answer of waiting) answer();
  };

  const kill = (j: Job, signal: NodeJS.Signals) => {
    if (j.pid !== null && !j.exit) platform.killGroup(j.pid, signal);
  };

  /** SIGTERM the group, SIGKILL it after the grace period (even if the leader is gone). */
  const terminate = (j: Job) => {
    j.killedByUs = true;
    kill(j, 'SIGTERM');
    const pid = j.pid;
    if (pid === null || j.killTimer) return;
    // Not cleared when the leader exits: stragglers of the group must die too.
    j.killTimer = setTimeout(() => {
      platform.killGroup(pid, 'SIGKILL');
      // Death is asynchronous: stay "killing" for one more pipe grace period
      // so the pipes can close (and the exit record follow) on their own.
      j.killTimer = setTimeout(() => (j.killTimer = null), opts.pipeGraceMs);
      j.killTimer.unref();
    }, opts.killGraceMs);
    j.killTimer.unref();
  };

  const remember = (j: Job) => {
    finishedOrder.push(j.id);
    while (finishedOrder.length > opts.keepFinished) {
      const old = jobs.get(finishedOrder.shift() as string);
      if (old) {
        old.out.clearReplay();
        jobs.delete(old.id);
      }
    }
  };

  /** Whether the kernel's OOM killer ended this job: its own group's count,
   *  else (no groups) any OOM kill in the VM while it ran. */
  const wasOomKilled = async (j: Job, group: JobGroup | null): Promise<boolean> => {
    if (j.exitStatus?.signal !== 'SIGKILL' || j.killedByUs) return false;
    if (group) return ((await group.oomKills()) ?? 0) > 0;
    const after = j.oomBefore === null ? null : await oomKills();
    return j.oomBefore !== null && after !== null && after > j.oomBefore;
  };

  const finish = async (j: Job, error?: string) => {
    if (j.exit || j.dropped) return;
    j.out.flush();
    const status = j.exitStatus ?? { code: null, signal: null };
    const group = await j.group;
    const oomKilled = await wasOomKilled(j, group ?? null);
    const usage = j.pid === null ? null : await group?.usage().catch(() => null);
    if (j.tty) await forgetTty(platform, j.id).catch(() => undefined);
    if (j.exit || j.dropped) return;
    j.exit = {
      jobId: j.id,
      seq: j.out.nextSeq,
      exitCode: status.code,
      signal: status.signal,
      oomKilled,
      timedOut: j.timedOut,
      ...(usage ? { usage } : {}),
      ...(error === undefined ? {} : { error: error.slice(0, 4096) }),
      startedAt: j.startedAt,
      finishedAt: platform.clock.now(),
    };
    for (const t of j.timers) clearTimeout(t);
    j.timers.clear();
    for (const s of streams(j)) s.destroy();
    releaseEcho(j); // now answered "not open"
    sinks.exit(j.exit);
    // After the exit record has gone out: the group's rmdir (~1.5 ms under
    // TCG) and the next job's group, made ahead, need not delay it.
    void group?.remove();
    remember(j);
  };

  const replay = (j: Job, fromSeq: number | undefined) => {
    if (fromSeq !== undefined) {
      for (const c of j.out.replay(fromSeq)) sinks.output({ jobId: j.id, ...c });
    }
    if (j.exit) sinks.exit(j.exit);
  };

  function start(msg: Exec): Promise<{ pid: number | null }> {
    const j: Job = {
      id: msg.jobId,
      proc: null,
      pid: null,
      // A terminal's output is keystroke echo: each read goes at once. The
      // 5 ms that gather a pipe's small reads were added to every echo (73 ms
      // under TCG with them, bench/tty.ts, against a 32 ms agent ping).
      out: createOutputSink(msg.tty ? { ...opts, coalesceMs: 0 } : opts, (c) => {
        if (!j.dropped) sinks.output({ jobId: msg.jobId, ...c });
        if (j.echo.waiting.length > 0) releaseEcho(j);
      }),
      startedAt: platform.clock.now(),
      exit: null,
      exitStatus: null,
      timedOut: false,
      killedByUs: false,
      oomBefore: null,
      group: null,
      timers: new Set(),
      killTimer: null,
      dropped: false,
      tty: msg.tty !== undefined,
      resizing: Promise.resolve(),
      echo: { waiting: [], timer: null },
    };
    jobs.set(j.id, j);
    // Every job enters its own group as it starts (the launcher forks it
    // there, CLONE_INTO_CGROUP), made ahead of it. Moved in after its spawn,
    // its exit waited ~4 ms for the move under TCG (cgroup migration waits
    // for an RCU grace period): a warm /bin/true job took 53.6 ms, now 44.4
    // (trace of 50 jobs each, quiet host, 2026-12-08). A tty job's mvirt-pty
    // forks its command at once, before a move of the helper could take the
    // command along.
    const made = platform.limitedGroup(j.id, msg.limits ?? {});
    j.group = made.catch(() => null);
    return made.then(
      (g) => {
        // Cancelled or dropped while its group was being made: never started.
        if (j.killedByUs || j.dropped) {
          void finish(j);
          return { pid: null };
        }
        return launch(j, msg, g);
      },
      (err: unknown) => {
        // No groups in this guest: a job without limits runs all the same.
        if (!msg.limits) return launch(j, msg, null);
        const message = `cannot apply the job's limits: ${(err as Error).message}`;
        void finish(j, message);
        throw new AgentError('SPAWN_FAILED', message);
      },
    );
  }

  /** Spawn a job's process (in its limited group when it has one). */
  function launch(
    j: Job,
    msg: Exec,
    limited: LimitedJobGroup | null,
  ): Promise<{ pid: number | null }> {
    // An imported image's Env and WorkingDir are defaults the job's own override;
    // its Entrypoint goes before the job's argv, which takes Cmd's place (`docker run`).
    const image = platform.image ?? null;
    const env = { ...platform.jobEnv(), ...image?.env, ...msg.env };
    const command = image === null ? msg.argv : [...image.entrypoint, ...msg.argv];
    const argv = msg.tty ? ttyArgv(platform, j.id, msg.tty, command) : command;
    const cwd = msg.cwd ?? image?.workingDir;
    let proc: Proc;
    try {
      proc = platform.spawn({ argv, env, cwd, enterGroup: limited?.procs });
    } catch (err) {
      // Synchronous spawn errors (bad argument types, EMFILE…).
      const message = (err as Error).message;
      void finish(j, message);
      return Promise.reject(new AgentError('SPAWN_FAILED', message));
    }
    j.proc = proc;

    return new Promise((resolve, reject) => {
      let spawned = false;
      proc.on('error', (err) => {
        if (spawned) {
          sinks.log('warn', `job ${j.id}: ${err.message}`);
          return;
        }
        const where = msg.cwd ? ` (cwd ${msg.cwd})` : '';
        const message = `${err.message}${where}`;
        void finish(j, message);
        reject(new AgentError('SPAWN_FAILED', message));
      });
      proc.on('spawn', () => {
        spawned = true;
        j.pid = proc.pid ?? null;
        // Dropped while its spawn was in flight: it must not outlive the others.
        if (j.dropped && j.pid !== null) platform.killGroup(j.pid, 'SIGKILL');
        // No groups in this guest: an OOM kill in the VM while it runs counts as its own.
        if (j.pid !== null && !limited) {
          j.group = oomKills().then((n) => {
            j.oomBefore = n;
            return null;
          });
        }
        wire(j, proc, msg);
        resolve({ pid: j.pid });
      });
    });
  }

  function wire(j: Job, proc: Proc, msg: Exec) {
    for (const [name, s] of [
      ['stdout', proc.stdout],
      ['stderr', proc.stderr],
    ] as const) {
      s?.on('data', (d: Buffer) => j.out.write(name, d));
      s?.on('error', () => undefined);
      if (outbox.outputPaused) s?.pause();
    }
    if (proc.stdin) {
      // The child may exit without reading its input: EPIPE is not our error.
      proc.stdin.on('error', () => undefined);
      if (msg.stdin && msg.stdin.length > 0) proc.stdin.write(msg.stdin);
      if (!msg.stdinOpen) proc.stdin.end();
    }
    if (msg.timeoutMs !== undefined) {
      later(j, msg.timeoutMs, () => {
        if (j.exit || j.exitStatus) return;
        j.timedOut = true;
        terminate(j);
      });
    }
    proc.on('exit', (code, signal) => {
      j.exitStatus = { code, signal };
      const waitPipes = () =>
        later(j, opts.pipeGraceMs, () => {
          // Still paused by backpressure: the pipes are full, not abandoned.
          // A pending SIGKILL escalation will close them: the exit record
          // must not claim the job is over while part of its group lives.
          if (outbox.outputPaused || j.killTimer) waitPipes();
          else void finish(j);
        });
      waitPipes();
    });
    proc.on('close', () => void finish(j));
  }

  return {
    async exec(msg) {
      const known = jobs.get(msg.jobId);
      if (known) {
        replay(known, msg.fromSeq);
        return { pid: known.pid, duplicate: true };
      }
      return start(msg);
    },
    stdin(msg) {
      const j = jobs.get(msg.jobId);
      if (!j) throw new AgentError('JOB_NOT_FOUND', `no job ${msg.jobId}`);
      const s = j.proc?.stdin;
      if (j.exit || !s || s.writableEnded || s.destroyed) {
        sinks.log('debug', `job ${j.id}: stdin after its end ignored`);
        return { open: false };
      }
      // Answered once the pipe has taken the bytes: the host sends the next
      // chunk only then, so a job that reads slowly holds its writer back.
      // A tty job's answer waits for the echo as well (releaseEcho): on
      // the guest's one vCPU, a reply made first delays the echo by its
      // making and sending. bench/tty.ts with both ways alternating key by
      // key in one VM, 4 runs at load 8–11: echo 10.6, 12.4, 38.9, 97.9 ms
      // against 13.7, 15.5, 77.5, 110 ms replying first.
      const written = new Promise<{ open: boolean }>((resolve) => {
        const answer = () => resolve({ open: !msg.eof && !s.destroyed });
        if (msg.data.length === 0) return answer();
        const done = () => {
          if (!j.tty || j.exit) return answer();
          j.echo.waiting.push(answer);
          j.echo.timer ??= setTimeout(() => releaseEcho(j), opts.echoWaitMs);
        };
        // An EPIPE (the job stopped reading) ends up here as well: not open.
        s.write(msg.data, (err) => (err ? resolve({ open: false }) : done()));
      });
      if (msg.eof) s.end();
      return written;
    },
    signal(msg) {
      const j = jobs.get(msg.jobId);
      if (!j) throw new AgentError('JOB_NOT_FOUND', `no job ${msg.jobId}`);
      if (j.exit || j.pid === null) return { running: false };
      if (msg.signal === 'SIGTERM') terminate(j);
      else {
        if (msg.signal === 'SIGKILL') j.killedByUs = true;
        kill(j, msg.signal);
      }
      return { running: true };
    },
    resize(msg) {
      const j = jobs.get(msg.jobId);
      if (!j) throw new AgentError('JOB_NOT_FOUND', `no job ${msg.jobId}`);
      const run = j.resizing.then(async () => {
        if (!j.tty || j.exit || j.pid === null || j.dropped) return { running: false };
        const size = { cols: msg.cols, rows: msg.rows };
        return { running: await resizeTty(platform, j.id, j.pid, size) };
      });
      j.resizing = run.catch(() => undefined);
      return run;
    },
    known() {
      return [...jobs.values()].map((j) => ({
        jobId: j.id,
        state: j.exit ? ('exited' as const) : ('running' as const),
        lastSeq: j.out.nextSeq - 1,
      }));
    },
    killAll() {
      for (const j of jobs.values()) {
        if (!j.exit && j.pid !== null) {
          j.killedByUs = true;
          platform.killGroup(j.pid, 'SIGKILL');
        }
      }
      for (const j of jobs.values()) {
        for (const t of j.timers) clearTimeout(t);
        if (j.killTimer) clearTimeout(j.killTimer);
      }
    },
    drop() {
      let running = 0;
      for (const j of jobs.values()) {
        j.dropped = true;
        if (!j.exit) {
          running++;
          if (j.pid !== null) platform.killGroup(j.pid, 'SIGKILL');
          // Its group goes once empty (or at a later sweep).
          void j.group?.then((g) => g?.remove());
        }
        for (const t of j.timers) clearTimeout(t);
        j.timers.clear();
        if (j.killTimer) clearTimeout(j.killTimer);
        for (const s of streams(j)) s.destroy();
        releaseEcho(j);
        j.out.clearReplay();
      }
      jobs.clear();
      finishedOrder.length = 0;
      return running;
    },
  };
}
