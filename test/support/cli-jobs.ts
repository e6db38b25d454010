/**
 * The fixture of the CLI job tests (run.test.ts, jobs.test.ts in
 * test/unit/cli): a real mvirtd whose fake VMs run the real agent core, a
 * request spy, one service VM `svc`, and the helpers the tests share. Call it
 * inside a `describe`: it registers that suite's before and after hooks.
 */
import path from 'node:path';
import { after, before } from 'node:test';
import { runCli } from '../../host/cli/run.js';
import type { JobRecord, VmRecord } from '../../protocol/rpc.js';
import { TEST_AGENT_OPTIONS } from '../../harness/agent-options.js';
import { cliEnv } from '../../harness/connect.js';
import { spyRequests, type RequestSpy } from '../../harness/daemon.js';
import { createFakeHypervisor } from '../../harness/fake-vms.js';
import { memoryIo, type MemoryIo } from './cli-io.js';
import { cleanupAll, startJobDaemon, type JobDaemon } from './jobs.js';

/** A regression must fail, not hang: every wait in these tests is for an event, bounded here. */
export const T = { timeout: 30_000 };
/** Stored output per job: small, so that retention drops some (the logs test). */
export const RETAIN = 4096;

export interface CliJobs {
  /** Set once the suite's before hook has run. */
  readonly j: JobDaemon;
  readonly spy: RequestSpy;
  readonly svc: VmRecord;
  /** A fresh io whose stdin is an empty pipe (already at its end) unless told otherwise. */
  newIo(o?: { tty?: boolean; errTty?: boolean; stdin?: string | null }): MemoryIo;
  mvirt(
    argv: string[],
    io?: MemoryIo,
  ): Promise<{ code: number; out: string; err: string; io: MemoryIo }>;
  /** Start `mvirt run …` and resolve once it has subscribed to the job (its first job.logs). */
  started(
    argv: string[],
    io?: MemoryIo,
  ): Promise<{
    done: ReturnType<CliJobs['mvirt']>;
    jobId: string;
    io: MemoryIo;
    mark: number;
  }>;
  /** The params of the first `method` request since `mark`. */
  sent(method: string, mark: number): unknown;
  count(method: string, mark: number): number;
  goFile(name: string): string;
  /** The first published record of a job whose argv contains `tag`, once it is in `state`. */
  jobTagged(tag: string, state: JobRecord['state']): Promise<JobRecord>;
}

export function cliJobsFixture(): CliJobs {
  let j!: JobDaemon;
  let spy!: RequestSpy;
  let svc!: VmRecord;
  before(async () => {
    j = await startJobDaemon({
      args: ['--job-output-bytes', String(RETAIN)],
      // A job that ignores SIGTERM is SIGKILLed only after a minute: a test
      // decides when it ends (the second Ctrl-C leaves while it still runs).
      hv: createFakeHypervisor({
        agent: 'real',
        realAgent: { jobs: { ...TEST_AGENT_OPTIONS.jobs, killGraceMs: 60_000 } },
      }),
    });
    spy = await spyRequests(j.d);
    svc = await j.serviceVm('svc');
  });
  after(async () => {
    await spy.stop();
    await cleanupAll();
  });

  const f: CliJobs = {
    get j() {
      return j;
    },
    get spy() {
      return spy;
    },
    get svc() {
      return svc;
    },
    newIo(o = {}) {
      const io = memoryIo({ env: cliEnv(j.d), ...o });
      if (!o.tty && o.stdin !== null) io.stdin.end(o.stdin ?? '');
      return io;
    },
    async mvirt(argv, io = f.newIo()) {
      const code = await runCli(argv, io);
      return { code, out: io.out(), err: io.errText(), io };
    },
    async started(argv, io = f.newIo()) {
      const mark = spy.requests.length;
      const done = f.mvirt(argv, io);
      const logs = await spy.next('job.logs', mark);
      const jobId = (logs.params as { jobId: string }).jobId;
      return { done, jobId, io, mark };
    },
    sent: (method, mark) => spy.requests.slice(mark).find((q) => q.method === method)?.params,
    count: (method, mark) => spy.requests.slice(mark).filter((q) => q.method === method).length,
    goFile: (name) => path.join(j.tmp, name),
    jobTagged: (tag, state) =>
      j.rec.until(() => {
        for (const m of j.rec.seen) {
          if (!m.topic.endsWith('/state') || !m.topic.includes('/job/') || m.payload.length === 0)
            continue;
          const r = JSON.parse(m.payload.toString()) as JobRecord;
          if (r.argv.includes(tag) && r.state === state) return r;
        }
        return undefined;
      }, `a job tagged ${tag} ${state}`),
  };
  return f;
}
