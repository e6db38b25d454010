/**
 * The one transition every job state change goes through, and what a job's
 * end sets off: its VM let go of (destroyed when it was the job's own), the
 * queue republished and pumped.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { JobRecord } from '../../protocol/rpc.js';
import type { JobContext } from './context.js';
import { canTransitionJob } from './states.js';
import { isTerminalJob } from '../../protocol/states.js';

export function transitionPart(
  ctx: JobContext,
): Pick<JobContext, 'transition' | 'destroyVm' | 'republishQueue'> {
  const { repo, active, options } = ctx;

  /**
   * The only way a job changes state: checks the transition table, persists
   * (compare-and-set, with its event linked to the job and its VM), publishes
   * the retained record and logs. Finishing also settles the in-memory entry.
   */
  const transition: JobContext['transition'] = (id, to, reason, extra = {}) => {
    const cur = repo.get(id);
    if (!cur) throw new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`);
    if (!canTransitionJob(cur.state, to)) {
      throw new MvirtError('INTERNAL', `job ${id} is ${cur.state} and cannot become ${to}`);
    }
    const a = active.get(id);
    a?.out?.flush();
    const at = ctx.now();
    repo.transaction(() => {
      if (!repo.setState(id, cur.state, to, reason, at)) {
        throw new MvirtError('INTERNAL', `job ${id} changed state concurrently`);
      }
      if (to === 'running') repo.setStarted(id, at);
      if (isTerminalJob(to)) {
        const e = extra.exit;
        repo.setFinish(
          id,
          {
            exitCode: e?.exitCode ?? null,
            signal: e?.signal ?? null,
            oomKilled: e?.oomKilled ?? false,
            ...(e?.usage ? { usage: e.usage } : {}),
          },
          at,
        );
      }
      ctx.events.append({
        level: extra.level ?? 'audit',
        component: 'job',
        message: `job ${id}: ${cur.state} → ${to}${reason ? ` (${reason})` : ''}`,
        objects: cur.vm ? [id, cur.vm] : [id],
        data: { from: cur.state, to, reason, vm: cur.vm },
      });
    });
    const rec = ctx.record(id);
    ctx.publishJob(rec);
    ctx.log.info({ jobId: id, vmId: rec.vm, from: cur.state, to, reason }, 'job state');
    if (isTerminalJob(to)) settle(id, rec);
    ctx.changes.emit('state', rec, cur.state);
    return rec;
  };

  /** A job reached a final state: let go of its VM and wake up the queue. */
  function settle(id: string, rec: JobRecord): void {
    const a = active.get(id);
    active.delete(id);
    if (a) {
      a.out?.close();
      if (a.graceTimer) clearTimeout(a.graceTimer);
      if (a.vmId) {
        if (a.ownsVm) destroyVm(a.vmId, `its job ${id} ended`);
        else if (![...active.values()].some((o) => o.vmId === a.vmId && o.phase === 'running'))
          ctx.agents.setBusy(a.vmId, false);
      }
    }
    ctx.ended.emit(id, rec);
    // The broker keeps retained messages in memory: a finished job's state is
    // cleared after a while (job.get still has it) so that they do not pile up.
    const t = setTimeout(() => {
      ctx.bus
        .publish(ctx.topics.jobState(id), '', { retain: true, qos: 1 })
        .catch((err: unknown) => ctx.log.debug({ err, jobId: id }, 'clear failed'));
    }, options.retainFinishedMs);
    t.unref();
    republishQueue();
    ctx.pump();
  }

  function destroyVm(vmId: string, why: string): void {
    // While shutting down, leave it: recover() destroys it on the next start.
    if (ctx.closing) return;
    ctx.destroyer.destroy(vmId, why, () => {
      ctx.pools.release(vmId);
      ctx.pump();
    });
  }

  /** Queue positions shift when a job leaves the queue: republish those still waiting. */
  function republishQueue(): void {
    // One pass: record() would look each position up again (quadratic in the queue).
    ctx.waiting().forEach((a, i) => {
      const rec = repo.get(a.id);
      if (rec) ctx.publishJob({ ...rec, queuePosition: i + 1 });
    });
  }

  return { transition, destroyVm, republishQueue };
}
