/**
 * The checks job.run and job.cancel make before they change anything, shared
 * by the real calls (manager.ts) and their dry runs (plan.ts) so that the two
 * cannot drift: each throws the typed error the call answers with, and
 * returns what it found, the passed checks in words included.
 */
import type { JobSpec } from '../store/index.js';
import { MvirtError } from '../../protocol/errors.js';
import type { JobRecord, JobTarget, ParamsOf, PoolRecord, VmRecord } from '../../protocol/rpc.js';
import { isJobTargetVm, isTerminalJob } from '../../protocol/states.js';
import { TTY_DEFAULT_SIZE } from '../../protocol/limits.js';
import type { Active, JobContext } from './context.js';

export interface RunCheck {
  target: JobTarget;
  /** The service VM of a {vm} target. */
  vm?: VmRecord;
  /** The pool of a {pool} target (or the default pool). */
  pool?: PoolRecord;
  /** The checks passed, in words. */
  admission: string[];
}

export type CancelCheck =
  /** Finished: job.cancel answers the record and changes nothing. */
  | { kind: 'finished'; rec: JobRecord; admission: string[] }
  /** Not held in memory (nothing to act on): answered as it is. */
  | { kind: 'untracked'; rec: JobRecord; admission: string[] }
  /** Queued and no exec sent: cancelled at once. */
  | { kind: 'before-start'; rec: JobRecord; a: Active; admission: string[] }
  /** The exec went out: the agent is asked to signal the job's process group. */
  | { kind: 'signal'; rec: JobRecord; a: Active; admission: string[] };

export function jobChecks(ctx: JobContext) {
  const { vms, pools, options } = ctx;

  function notClosing(): void {
    if (ctx.closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
  }

  function resolveTarget(p: ParamsOf<'job.run'>, admission: string[]): RunCheck {
    if (p.vm !== undefined) {
      const vm = vms.get(p.vm); // VM_NOT_FOUND
      if (vm.kind !== 'service') {
        throw new MvirtError(
          'VM_BAD_STATE',
          `VM ${vm.name} is ${vm.kind === 'ephemeral' ? 'an ephemeral VM of another job or pool' : vm.kind}; jobs run on service VMs, images or pools`,
        );
      }
      if (!isJobTargetVm(vm.state)) {
        throw new MvirtError(
          'VM_BAD_STATE',
          `VM ${vm.name} is ${vm.state}; start it first (mvirt vm start ${vm.name})`,
          { details: { state: vm.state } },
        );
      }
      admission.push(`target: VM ${vm.name} (${vm.kind}, ${vm.state})`);
      return { target: { kind: 'vm', vm: vm.id }, vm, admission };
    }
    if (p.pool !== undefined) {
      const pool = pools.get(p.pool); // POOL_NOT_FOUND
      admission.push(`target: pool ${pool.name} (image ${pool.image}, max ${pool.max})`);
      return { target: { kind: 'pool', pool: p.pool }, pool, admission };
    }
    if (p.image !== undefined) {
      admission.push(`target: image ${p.image}`);
      return { target: { kind: 'image', image: p.image }, admission };
    }
    const dp = options.defaultPool;
    if (dp !== undefined && pools.exists(dp)) {
      admission.push(`target: none given, the default pool ${dp}`);
      return { target: { kind: 'pool', pool: dp }, pool: pools.get(dp), admission };
    }
    const image = vms.defaults.image;
    admission.push(`target: none given, the default image ${image}`);
    return { target: { kind: 'image', image }, admission };
  }

  /** A job's limits fit inside the VM it will run in (a bigger one could never bind). */
  function checkLimits(p: ParamsOf<'job.run'>, r: RunCheck, admission: string[]): void {
    const l = p.limits!;
    const size = r.vm ??
      r.pool ?? {
        vcpus: p.vcpus ?? vms.defaults.vcpus,
        memoryMiB: p.memoryMiB ?? vms.defaults.memoryMiB,
      };
    if (l.memoryMiB !== undefined && l.memoryMiB > size.memoryMiB)
      throw new MvirtError(
        'INVALID_PARAMS',
        `limits.memoryMiB ${l.memoryMiB} is more than the VM's ${size.memoryMiB} MiB: ask for less, or run the job in a bigger VM`,
      );
    if (l.cpus !== undefined && l.cpus > size.vcpus)
      throw new MvirtError(
        'INVALID_PARAMS',
        `limits.cpus ${l.cpus} is more than the VM's ${size.vcpus} vCPUs: ask for less, or run the job in a bigger VM`,
      );
    const parts = [
      l.memoryMiB !== undefined ? `memory ${l.memoryMiB} MiB` : null,
      l.cpus !== undefined ? `${l.cpus} CPUs` : null,
    ].filter(Boolean);
    admission.push(
      `limits ${parts.join(', ')} fit the VM (${size.memoryMiB} MiB, ${size.vcpus} vCPUs)`,
    );
  }

  return {
    /** job.run's checks: not shutting down, a valid target, an existing image. */
    async run(p: ParamsOf<'job.run'>): Promise<RunCheck> {
      notClosing();
      const admission: string[] = [];
      const r = resolveTarget(p, admission);
      if (r.target.kind === 'image') {
        await vms.checkImage(r.target.image); // IMAGE_NOT_FOUND
        admission.push(`image ${r.target.image} found`);
      }
      if (p.limits) checkLimits(p, r, admission);
      return r;
    },

    /** job.cancel's check (JOB_NOT_FOUND) and what the cancel amounts to. */
    cancel(id: string): CancelCheck {
      const rec = ctx.record(id); // JOB_NOT_FOUND
      const seen = `job ${id} found (${rec.state})`;
      if (isTerminalJob(rec.state))
        return { kind: 'finished', rec, admission: [seen, 'finished: nothing to cancel'] };
      const a = ctx.active.get(id);
      if (!a) return { kind: 'untracked', rec, admission: [seen, 'not held: nothing to act on'] };
      if (rec.state === 'queued' && !a.execSent)
        return { kind: 'before-start', rec, a, admission: [seen, 'not started yet'] };
      return { kind: 'signal', rec, a, admission: [seen, 'its exec went out'] };
    },
  };
}

export type JobChecks = ReturnType<typeof jobChecks>;

/** The stored spec of a job job.run accepted (its id given). */
export function jobSpec(
  id: string,
  p: ParamsOf<'job.run'>,
  target: JobTarget,
  defaults: { vcpus: number; memoryMiB: number },
): JobSpec {
  const spec: JobSpec = { id, target, argv: p.argv };
  if (p.env) spec.env = p.env;
  if (p.cwd !== undefined) spec.cwd = p.cwd;
  if (p.stdin !== undefined) spec.stdin = Buffer.from(p.stdin);
  if (p.stdinOpen) spec.stdinOpen = true;
  if (p.encoding === 'bytes') spec.bytesOut = true;
  if (p.timeoutMs !== undefined) spec.timeoutMs = p.timeoutMs;
  if (p.limits) spec.limits = p.limits;
  if (p.tty)
    spec.tty = { cols: p.cols ?? TTY_DEFAULT_SIZE.cols, rows: p.rows ?? TTY_DEFAULT_SIZE.rows };
  if (target.kind === 'image') {
    spec.vcpus = p.vcpus ?? defaults.vcpus;
    spec.memoryMiB = p.memoryMiB ?? defaults.memoryMiB;
  }
  return spec;
}
