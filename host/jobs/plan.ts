/**
 * Dry runs of job.run and job.cancel (protocol/plan.ts): the real calls'
 * own checks (checks.ts), then a description of what they would do. Reads
 * only: no job row, no event, no publish, no agent message, no VM.
 *
 * An exec is described without the values of its environment or its stdin:
 * a plan names the variables and gives the size of the input.
 */
import type { DryRunPlan, ParamsOf } from '../../protocol/rpc.js';
import type { JobSpec } from '../store/index.js';
import { createPlan, type PlanBuilder } from '../plan.js';
import { jobSpec, type JobChecks } from './checks.js';
import type { JobContext } from './context.js';

type Reserved = { vms: number; vcpus: number; memoryMiB: number };

const size = (vcpus: number, memoryMiB: number): string =>
  `${vcpus} vCPU${vcpus === 1 ? '' : 's'} / ${memoryMiB} MiB`;

/** The exec message job.run has the agent run, values of env and stdin left out. */
export function execShown(spec: JobSpec): Record<string, unknown> {
  return {
    jobId: '(assigned by job.run)',
    argv: spec.argv,
    ...(spec.env ? { envKeys: Object.keys(spec.env) } : {}),
    ...(spec.cwd !== undefined ? { cwd: spec.cwd } : {}),
    ...(spec.stdin !== undefined ? { stdinBytes: spec.stdin.length } : {}),
    ...(spec.stdinOpen ? { stdinOpen: true } : {}),
    ...(spec.timeoutMs !== undefined ? { timeoutMs: spec.timeoutMs } : {}),
    ...(spec.limits ? { limits: spec.limits } : {}),
    ...(spec.tty ? { tty: spec.tty } : {}),
  };
}

export function jobPlans(ctx: JobContext, checks: JobChecks, creatingEphemeral: () => Reserved) {
  const { vms, options } = ctx;

  /** Where a job for an image would go now: room for its VM, or the queue. */
  function imagePlacement(b: PlanBuilder, spec: JobSpec, image: string): void {
    const want = { vcpus: spec.vcpus!, memoryMiB: spec.memoryMiB! };
    const ahead = ctx.waiting().length;
    const held = vms.allocated();
    const fits = vms.canAdmit(want, creatingEphemeral());
    const heldText = `${held.vms} VMs, ${size(held.vcpus, held.memoryMiB)} held`;
    if (ahead === 0 && fits) {
      b.admit(`capacity: ${size(want.vcpus, want.memoryMiB)} fit now (${heldText})`);
    } else {
      b.step(
        ahead > 0
          ? `wait in the queue behind ${ahead} job${ahead === 1 ? '' : 's'}`
          : `wait in the queue until ${size(want.vcpus, want.memoryMiB)} fit (${heldText})`,
      );
    }
    const spare = ahead === 0 ? ctx.spares?.peek({ image, ...want }) : null;
    if (spare)
      b.step(
        `take spare VM ${ctx.safeGet(spare)?.name ?? spare} (resumed ahead from the template of image ${image}, ${size(want.vcpus, want.memoryMiB)}, ready), then run; resume another spare`,
      );
    else
      b.step(
        `boot an ephemeral VM job-… from image ${image} (${size(want.vcpus, want.memoryMiB)}), then run`,
      );
  }

  return {
    async run(p: ParamsOf<'job.run'>): Promise<DryRunPlan> {
      const c = await checks.run(p);
      const b = createPlan('job.run');
      for (const a of c.admission) b.admit(a);
      const spec = jobSpec('job-…', p, c.target, vms.defaults);
      b.step('record job (queued)');
      const t = c.target;
      let where: string;
      if (t.kind === 'vm') {
        const name = c.vm?.name ?? t.vm;
        where = `on VM ${name}`;
        b.step(`place on VM ${name}`);
      } else if (t.kind === 'pool') {
        const pool = c.pool!;
        where = `for pool ${t.pool}`;
        b.step(
          pool.vms.ready > 0
            ? `take a ready VM of pool ${t.pool} (${pool.vms.ready} ready)`
            : `take a ready VM of pool ${t.pool} (none ready: boot one, up to max ${pool.max})`,
        );
      } else {
        where = `for image ${t.image} (an ephemeral VM of its own)`;
        imagePlacement(b, spec, t.image);
      }
      b.step(
        spec.tty
          ? `send exec to the agent: run under a pseudo-terminal of ${spec.tty.cols} columns × ${spec.tty.rows} rows (its output all on stdout)`
          : 'send exec to the agent',
      );
      b.agent('exec', execShown(spec));
      if (p.wait) b.step('wait for the job to end, then answer with its output');
      if (t.kind !== 'vm') b.step('kill and delete its VM once the job ends');
      b.change(`job: queued ${where}`);
      if (
        t.kind === 'image' &&
        !ctx.spares?.peek({ image: t.image, vcpus: spec.vcpus!, memoryMiB: spec.memoryMiB! })
      )
        b.change(`vm job-…: created (ephemeral, ${size(spec.vcpus!, spec.memoryMiB!)})`);
      b.change('event: audit "job …: queued"');
      return b.done();
    },

    cancel(id: string): DryRunPlan {
      const c = checks.cancel(id);
      const b = createPlan('job.cancel');
      for (const a of c.admission) b.admit(a);
      if (c.kind === 'finished' || c.kind === 'untracked') return b.done();
      const { a, rec } = c;
      const vm = a.vmId !== null ? (ctx.safeGet(a.vmId)?.name ?? a.vmId) : null;
      b.change(`event: audit "job ${id}: cancel"`);
      if (c.kind === 'before-start') {
        b.step('mark the job cancelled (it has not started)');
        b.change(`job ${id}: ${rec.state} → cancelled`);
      } else {
        b.step(
          `send signal SIGTERM to the job's process group on VM ${vm} (the agent escalates to SIGKILL)`,
          `wait up to ${options.cancelWaitMs} ms for the job to end`,
        );
        b.agent('signal', { jobId: id, signal: 'SIGTERM' });
        b.change(`job ${id}: ${rec.state} → cancelled`);
      }
      if (vm !== null && a.ownsVm) {
        b.step(`kill and delete VM ${vm} (the job's own)`);
        b.change(`vm ${vm}: killed and deleted`);
      }
      return b.done();
    },
  };
}
