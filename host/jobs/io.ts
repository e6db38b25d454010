/**
 * Talking to a running job: job.signal (any of the protocol's signals to its
 * process group), job.stdin (more input for a job run with `stdinOpen`) and
 * job.resize (the window of a job run with `tty`).
 *
 * job.stdin is flow-controlled end to end: the agent answers a chunk once the
 * job's stdin pipe has taken it, and mvirtd answers the caller only then, so
 * a caller that sends its next chunk after each reply (as `mvirt run` does)
 * never has more than one chunk on the way and a job that reads slowly holds
 * it back. Chunks of one job go to the agent in the order they arrived; a
 * call for a job still queued waits until its exec has gone out.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { DryRunPlan, JobRecord, ParamsOf } from '../../protocol/rpc.js';
import { isTerminalJob } from '../../protocol/states.js';
import { createPlan } from '../plan.js';
import type { Active, JobContext } from './context.js';

/** JOB_NOT_RUNNING for a signal: the job is still queued, or has ended. */
const notRunning = (rec: JobRecord) =>
  new MvirtError(
    'JOB_NOT_RUNNING',
    rec.state === 'queued'
      ? `job ${rec.jobId} is queued: signal it once it runs (job.get, or its state topic, says when)`
      : `job ${rec.jobId} has ended (${rec.state}): there is nothing left to signal`,
    { details: { state: rec.state } },
  );

/** job.resize of a job without a terminal. */
const noTty = (rec: JobRecord) =>
  new MvirtError(
    'INVALID_PARAMS',
    `job ${rec.jobId} runs without a terminal: only a job run with tty: true has a window to resize`,
  );

export function jobIo(ctx: JobContext) {
  const { active, options } = ctx;
  /** Per job: the chunk before, which the next waits for (order). */
  const chains = new Map<string, Promise<unknown>>();

  /** Resolves once the job's exec is acknowledged (running), or with null when it ended first. */
  function untilRunning(a: Active): Promise<Active | null> {
    if (a.phase === 'running') return Promise.resolve(a);
    return new Promise((resolve) => {
      const onState = (rec: JobRecord) => {
        if (rec.jobId !== a.id) return;
        if (rec.state === 'running' || isTerminalJob(rec.state)) {
          ctx.changes.off('state', onState);
          resolve(rec.state === 'running' ? a : null);
        }
      };
      ctx.changes.on('state', onState);
    });
  }

  async function writeChunk(id: string, data: Buffer, eof: boolean): Promise<{ open: boolean }> {
    const a = active.get(id);
    if (!a) return { open: false }; // finished meanwhile: its stdin went with it
    const running = await untilRunning(a);
    if (!running || !running.vmId || !active.has(id)) return { open: false };
    const r = (await ctx.agents.call(
      running.vmId,
      'stdin',
      { jobId: id, data: new Uint8Array(data), ...(eof ? { eof: true } : {}) },
      options.execTimeoutMs,
    )) as { open?: unknown } | undefined;
    return { open: r?.open === true };
  }

  return {
    async signal(p: ParamsOf<'job.signal'>): Promise<{ delivered: boolean }> {
      const rec = ctx.record(p.jobId);
      const a = active.get(p.jobId);
      if (!a || a.phase !== 'running' || !a.vmId) throw notRunning(rec);
      ctx.events.append({
        level: 'audit',
        component: 'job',
        message: `job ${p.jobId}: ${p.signal}`,
        objects: [p.jobId, a.vmId],
      });
      const r = (await ctx.agents.call(
        a.vmId,
        'signal',
        { jobId: p.jobId, signal: p.signal },
        options.execTimeoutMs,
      )) as { running?: unknown } | undefined;
      return { delivered: r?.running === true };
    },

    async stdin(p: ParamsOf<'job.stdin'>): Promise<{ open: boolean }> {
      const rec = ctx.record(p.jobId);
      if (isTerminalJob(rec.state)) return { open: false };
      const data = Buffer.from(p.data, 'base64');
      if (p.eof)
        ctx.events.append({
          level: 'audit',
          component: 'job',
          message: `job ${p.jobId}: stdin closed`,
          objects: rec.vm ? [p.jobId, rec.vm] : [p.jobId],
        });
      const before = chains.get(p.jobId) ?? Promise.resolve();
      const mine = before.then(() => writeChunk(p.jobId, data, p.eof === true));
      const settled = mine.catch(() => undefined);
      chains.set(p.jobId, settled);
      void settled.then(() => {
        if (chains.get(p.jobId) === settled) chains.delete(p.jobId);
      });
      return mine;
    },

    /**
     * Not audited, as stdin chunks are not: a window being dragged sends a
     * resize per step, and the size is the caller's view, not the job's
     * state (job.run recorded who started the job and its first size).
     */
    async resize(p: ParamsOf<'job.resize'>): Promise<{ delivered: boolean }> {
      const rec = ctx.record(p.jobId);
      if (!rec.tty) throw noTty(rec);
      const a = active.get(p.jobId);
      if (!a || a.phase !== 'running' || !a.vmId) throw notRunning(rec);
      const r = (await ctx.agents.call(
        a.vmId,
        'resize',
        { jobId: p.jobId, cols: p.cols, rows: p.rows },
        options.execTimeoutMs,
      )) as { running?: unknown } | undefined;
      return { delivered: r?.running === true };
    },

    planResize(p: ParamsOf<'job.resize'>): DryRunPlan {
      const rec = ctx.record(p.jobId);
      if (!rec.tty) throw noTty(rec);
      const a = active.get(p.jobId);
      if (!a || a.phase !== 'running' || !a.vmId) throw notRunning(rec);
      const b = createPlan('job.resize');
      b.admit(
        `job ${p.jobId} is running under a terminal on VM ${ctx.safeGet(a.vmId)?.name ?? a.vmId}`,
      );
      b.step(
        `set its terminal to ${p.cols} columns × ${p.rows} rows (its foreground processes get SIGWINCH)`,
      );
      b.agent('resize', { jobId: p.jobId, cols: p.cols, rows: p.rows });
      return b.done();
    },

    planSignal(p: ParamsOf<'job.signal'>): DryRunPlan {
      const rec = ctx.record(p.jobId);
      const a = active.get(p.jobId);
      if (!a || a.phase !== 'running' || !a.vmId) throw notRunning(rec);
      const b = createPlan('job.signal');
      b.admit(`job ${p.jobId} is running on VM ${ctx.safeGet(a.vmId)?.name ?? a.vmId}`);
      b.step(`send ${p.signal} to the job's process group`);
      b.agent('signal', { jobId: p.jobId, signal: p.signal });
      b.change(`event: audit "job ${p.jobId}: ${p.signal}"`);
      return b.done();
    },

    planStdin(p: ParamsOf<'job.stdin'>): DryRunPlan {
      const rec = ctx.record(p.jobId);
      const b = createPlan('job.stdin');
      const bytes = Buffer.from(p.data, 'base64').length;
      if (isTerminalJob(rec.state)) {
        b.admit(`job ${p.jobId} is ${rec.state}: nothing is written (the reply says open: false)`);
        return b.done();
      }
      if (rec.state === 'queued') b.step('wait until the job runs');
      b.step(`write ${bytes} bytes to the job's stdin${p.eof ? ', then close it' : ''}`);
      b.agent('stdin', { jobId: p.jobId, bytes, ...(p.eof ? { eof: true } : {}) });
      if (p.eof) b.change(`event: audit "job ${p.jobId}: stdin closed"`);
      return b.done();
    },
  };
}

export type JobIo = ReturnType<typeof jobIo>;
