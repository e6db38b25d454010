/**
 * The job manager: job.run and friends, placement of jobs onto VMs (a service
 * VM, an ephemeral VM booted for the job, or a pool VM), the FIFO queue when
 * the host is at capacity, output and exit records from the agents, and the
 * one `transition()` every job state change goes through. Its parts share one
 * context (context.ts); this file binds them and is the manager's public face.
 *
 * | file | owns |
 * | --- | --- |
 * | context.ts | options, dependencies, jobs in memory, helpers |
 * | transition.ts | the one transition, and what a job's end sets off |
 * | placement.ts | targets, the queue, ephemeral VMs, exec, live output |
 * | agent-events.ts | output, exit, hello (replay or lost), agent gone, VM states |
 * | recovery.ts | the previous daemon's jobs |
 *
 * Delivery: a job runs at most once (the agent deduplicates exec by job id,
 * so an exec may safely be sent again) and is never silently lost: when its
 * VM stops, when the agent comes back without it, or when the agent stays
 * away longer than `agentGraceMs`, the job ends `lost` with a reason.
 */
import { randomBytes } from 'node:crypto';
import { MvirtError } from '../../protocol/errors.js';
import {
  JOB_LOGS_PAGE_BYTES,
  JOB_WAIT_OUTPUT_BYTES,
  type JobLogs,
  type JobRecord,
  type JobState,
  type ParamsOf,
} from '../../protocol/rpc.js';
import { agentPart } from './agent-events.js';
import { jobChecks, jobSpec } from './checks.js';
import { jobPlans } from './plan.js';
import { createJobContext, type JobContext, type JobManagerDeps } from './context.js';
import { decodeChunks } from './output.js';
import { jobIo } from './io.js';
import { placementPart } from './placement.js';
import { recoverJobs } from './recovery.js';
import { isTerminalJob } from '../../protocol/states.js';
import { transitionPart } from './transition.js';

export {
  DEFAULT_JOB_OPTIONS,
  META_JOB,
  type JobManagerDeps,
  type JobManagerOptions,
} from './context.js';

export type JobManager = ReturnType<typeof createJobManager>;

export function createJobManager(deps: JobManagerDeps) {
  const ctx: JobContext = createJobContext(deps);
  const placement = placementPart(ctx);
  const agent = agentPart(ctx);
  Object.assign(ctx, transitionPart(ctx), placement, agent);
  const { repo, vms, events, active, options } = ctx;
  const checks = jobChecks(ctx);
  const io = jobIo(ctx);

  function waitEnd(id: string, ms?: number): Promise<JobRecord | null> {
    const rec = repo.get(id);
    if (!rec) return Promise.reject(new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`));
    if (isTerminalJob(rec.state)) return Promise.resolve(rec);
    return new Promise((resolve) => {
      const done = (r: JobRecord | null): void => {
        if (timer) clearTimeout(timer);
        ctx.ended.off(id, onEnd);
        resolve(r);
      };
      const onEnd = (r: JobRecord): void => done(r);
      const timer = ms === undefined ? undefined : setTimeout(() => done(null), ms);
      ctx.ended.on(id, onEnd);
    });
  }

  /** stdout and stderr of a finished job for job.run {wait}, each cut at JOB_WAIT_OUTPUT_BYTES. */
  function collected(id: string): { stdout: string; stderr: string; truncated: boolean } {
    const bufs = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const size = { stdout: 0, stderr: 0 };
    let truncated = (repo.get(id)?.dropped.chunks ?? 0) > 0;
    let from = 0;
    for (;;) {
      const page = repo.chunks(id, from, JOB_LOGS_PAGE_BYTES);
      for (const c of page.chunks) {
        const room = JOB_WAIT_OUTPUT_BYTES - size[c.stream];
        if (room <= 0) {
          truncated = true;
          continue;
        }
        const part = c.data.length > room ? c.data.subarray(0, room) : c.data;
        if (part.length < c.data.length) truncated = true;
        bufs[c.stream].push(part);
        size[c.stream] += part.length;
      }
      if (!page.more || page.chunks.length === 0) break;
      from = page.chunks.at(-1)!.seq + 1;
    }
    const as = repo.get(id)?.encoding === 'bytes' ? 'base64' : 'utf8';
    return {
      stdout: Buffer.concat(bufs.stdout).toString(as),
      stderr: Buffer.concat(bufs.stderr).toString(as),
      truncated,
    };
  }

  return {
    /** Dry runs (plan.ts, io.ts): the same checks as the calls, a plan, no change. */
    plan: {
      ...jobPlans(ctx, checks, placement.creatingEphemeral),
      signal: io.planSignal,
      stdin: io.planStdin,
      resize: io.planResize,
    },
    /** job.signal, job.stdin and job.resize (io.ts). */
    signal: io.signal,
    stdin: io.stdin,
    resize: io.resize,

    async run(p: ParamsOf<'job.run'>): Promise<JobRecord & { stdout?: string; stderr?: string }> {
      const { target } = await checks.run(p);
      const id = `job-${randomBytes(8).toString('hex')}`;
      const spec = jobSpec(id, p, target, vms.defaults);
      repo.transaction(() => {
        repo.insert(spec, ctx.now());
        events.append({
          level: 'audit',
          component: 'job',
          message: `job ${id}: queued (${p.argv.join(' ').slice(0, 200)})`,
          objects: target.kind === 'vm' ? [id, target.vm] : [id],
          data: { target, argv: p.argv.slice(0, 32) },
        });
      });
      active.set(id, {
        id,
        target,
        phase: 'waiting',
        vmId: null,
        ownsVm: false,
        out: null,
        cancelRequested: false,
        replaying: false,
        execSent: false,
      });
      ctx.publishJob(ctx.record(id));
      ctx.pump();
      if (!p.wait) return ctx.record(id);
      const done = (await waitEnd(id))!;
      return { ...done, ...collected(id) };
    },

    get: (id: string): JobRecord => ctx.record(id),

    /** Jobs by state as stored. */
    countByState: () => repo.countByState(),

    onStateChange(fn: (rec: JobRecord, from: JobState) => void): () => void {
      ctx.changes.on('state', fn);
      return () => ctx.changes.off('state', fn);
    },

    list(q: ParamsOf<'job.list'> = {}): JobRecord[] {
      const vm = q?.vm !== undefined ? (vms.resolveId(q.vm) ?? q.vm) : undefined;
      return repo
        .list({ vm, state: q?.state, limit: q?.limit })
        .map((r) => (r.state === 'queued' ? ctx.record(r.jobId) : r));
    },

    async cancel(id: string): Promise<JobRecord> {
      const c = checks.cancel(id);
      if (c.kind === 'finished' || c.kind === 'untracked') return c.rec;
      const { rec, a } = c;
      a.cancelRequested = true;
      events.append({
        level: 'audit',
        component: 'job',
        message: `job ${id}: cancel`,
        objects: rec.vm ? [id, rec.vm] : [id],
      });
      if (c.kind === 'before-start') {
        return ctx.transition(id, 'cancelled', 'cancelled before it started');
      }
      await ctx.sendCancel(a);
      return (await waitEnd(id, options.cancelWaitMs)) ?? ctx.record(id);
    },

    logs(p: ParamsOf<'job.logs'>): JobLogs {
      active.get(p.jobId)?.out?.flush();
      const rec = ctx.record(p.jobId);
      const firstSeq = repo.firstSeq(p.jobId) ?? rec.nextSeq;
      const from = Math.max(p.fromSeq ?? 0, 0);
      const page = repo.chunks(p.jobId, from, p.maxBytes ?? JOB_LOGS_PAGE_BYTES);
      const last = page.chunks.at(-1);
      return {
        chunks: decodeChunks(page.chunks, rec.encoding === 'bytes'),
        nextSeq: last ? last.seq + 1 : Math.max(from, rec.nextSeq),
        more: page.more,
        firstSeq,
      };
    },

    /** After the VM manager's recovery: pick up the jobs of the previous daemon. */
    recover: (): void => recoverJobs(ctx),

    /** Stop acting; resolves once the VM destroys already under way are done. */
    async close(): Promise<void> {
      ctx.closing = true;
      agent.off();
      for (const a of active.values()) {
        a.out?.close();
        if (a.graceTimer) clearTimeout(a.graceTimer);
      }
      await ctx.destroyer.drain();
    },
  };
}
