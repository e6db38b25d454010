/**
 * Dry runs of pool.set and pool.delete (protocol/plan.ts): the real calls'
 * own checks, then what they would do, worked out by the same `needs` the
 * pool's reconcile acts on. Reads only: no pool row, no event, no publish,
 * no VM booted or destroyed.
 */
import type { DryRunPlan, ParamsOf, VmRecord } from '../../protocol/rpc.js';
import type { Templates } from '../snapshots/templates.js';
import type { PoolDef, StoredPool, StoredSnapshot } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';
import { createPlan, type PlanBuilder } from '../plan.js';

/** What reconcile would do to a pool: the VMs it destroys (and why), how many it boots. */
export interface PoolNeeds {
  destroy: { vm: VmRecord; why: string }[];
  /** VMs short of the target (≤ 0: none); each boots if capacity allows. */
  missing: number;
}

export interface SetCheck {
  old?: StoredPool;
  def: PoolDef;
  /** The snapshot a fromSnapshot pool forks. */
  snap?: StoredSnapshot;
}

export interface PoolPlanDeps {
  vms: Pick<VmManager, 'canAdmit' | 'allocated'>;
  checkSet(p: ParamsOf<'pool.set'>): Promise<SetCheck>;
  checkDelete(name: string): StoredPool;
  /** reconcile's reckoning for `name` defined as `def` (undefined: deleted). */
  needs(name: string, def: PoolDef | undefined): PoolNeeds;
  members(name: string): VmRecord[];
  /** The job holding a pool VM, if any. */
  claimOf(vmId: string): string | undefined;
  /** Absent: snapshot pools boot their VMs. */
  templates?: Pick<Templates, 'peek' | 'unavailable'>;
}

const size = (vcpus: number, memoryMiB: number): string =>
  `${vcpus} vCPU${vcpus === 1 ? '' : 's'} / ${memoryMiB} MiB`;
const plural = (n: number, one: string): string => `${n} ${one}${n === 1 ? '' : 's'}`;
const names = (vs: VmRecord[]): string => vs.map((v) => v.name).join(', ');

export function poolPlans(deps: PoolPlanDeps) {
  const { vms } = deps;

  /**
   * How the pool's VMs are made when they are forks: words for its steps
   * (`each …`) and for `changes`; undefined when they boot.
   */
  async function forkWords(c: SetCheck): Promise<{ each: string; kind: string } | undefined> {
    const { def, snap } = c;
    if (snap)
      return {
        each: `each a fork of snapshot ${snap.name} (${snap.id}): it resumes from its saved state, no boot`,
        kind: `VMs are forks of snapshot ${snap.name}`,
      };
    if (!def.snapshot || deps.templates?.unavailable() !== null) return undefined;
    const t = await deps.templates.peek({ ...def, metadata: {} });
    if (!t) return undefined;
    return t.exists
      ? {
          each: `each a fork of the template snapshot ${t.name}: no boot`,
          kind: `VMs are forks of template ${t.name}`,
        }
      : {
          each: `the first booted and, once ready, kept as the template snapshot ${t.name}; the others wait for it and fork it`,
          kind: `VMs are forks of template ${t.name}, taken of the first`,
        };
  }

  /** The VMs reconcile would destroy, and the boots: steps, commands; the words for `changes`. */
  function reconcileSteps(
    b: PlanBuilder,
    def: PoolDef,
    n: PoolNeeds,
    fork?: { each: string },
  ): string[] {
    const said: string[] = [];
    for (const d of n.destroy) b.step(`kill and delete VM ${d.vm.name} (${d.why})`);
    if (n.destroy.length > 0)
      said.push(`VM ${names(n.destroy.map((d) => d.vm))} killed and deleted`);
    if (n.missing <= 0) return said;
    const want = { vcpus: def.vcpus, memoryMiB: def.memoryMiB };
    const held = vms.allocated();
    const heldText = `${held.vms} VMs, ${size(held.vcpus, held.memoryMiB)} held`;
    if (!vms.canAdmit(want)) {
      b.step(
        `boot none of ${plural(n.missing, 'missing VM')} now: ${size(want.vcpus, want.memoryMiB)} do not fit (${heldText}); the pool boots when room frees`,
      );
      said.push(`${plural(n.missing, 'VM')} short, none fits now`);
      return said;
    }
    b.admit(`capacity: ${size(want.vcpus, want.memoryMiB)} fit now (${heldText})`);
    b.step(
      `${fork ? 'make' : 'boot'} ${plural(n.missing, 'ephemeral VM')} ${def.name}-… of image ${def.image} (${size(want.vcpus, want.memoryMiB)} each)${fork ? `, ${fork.each}` : ''}`,
      'warm each up with one exec of /bin/true through its agent',
    );
    for (let i = 0; i < n.missing; i++) b.agent('exec', { jobId: 'warmup-…', argv: ['/bin/true'] });
    said.push(`${plural(n.missing, 'VM')} would ${fork ? 'be made' : 'boot'}`);
    return said;
  }

  return {
    async set(p: ParamsOf<'pool.set'>): Promise<DryRunPlan> {
      const check = await deps.checkSet(p);
      const { old, def, snap } = check;
      const fork = await forkWords(check);
      const b = createPlan('pool.set');
      b.admit(
        old
          ? `pool ${def.name} exists (image ${old.image}, min ${old.min}, max ${old.max}, ${size(old.vcpus, old.memoryMiB)})`
          : `pool ${def.name} is new`,
      );
      if (snap)
        b.admit(
          `snapshot ${snap.name} (${snap.id}) is ready: its image ${snap.image} and size ${size(snap.vcpus, snap.memoryMiB)} are the pool's`,
        );
      b.admit(`min ${def.min} ≤ max ${def.max}`).admit(`image ${def.image} found`);
      b.step(`${old ? 'update' : 'store'} pool ${def.name}`);
      const said = reconcileSteps(b, def, deps.needs(def.name, def), fork);
      b.step(`publish pool ${def.name}'s state (retained)`);
      const tail = said.length > 0 ? ` — ${said.join('; ')}` : ' — no VM booted or removed';
      if (!old) {
        b.change(
          `pool ${def.name}: created (min ${def.min}, max ${def.max}${fork ? `; ${fork.kind}` : ''})${tail}`,
        );
      } else {
        const keys = ['image', 'min', 'max', 'vcpus', 'memoryMiB'] as const;
        const diff = keys
          .filter((k) => old[k] !== def[k])
          .map((k) => `${k} ${String(old[k])} → ${String(def[k])}`);
        if (old.snapshot !== def.snapshot || old.fromSnapshot !== def.fromSnapshot)
          diff.push(fork?.kind ?? 'VMs boot');
        b.change(
          `pool ${def.name}: ${diff.length > 0 ? `updated (${diff.join(', ')})` : 'unchanged'}${tail}`,
        );
        if (
          old.image !== def.image ||
          old.vcpus !== def.vcpus ||
          old.memoryMiB !== def.memoryMiB ||
          old.fromSnapshot !== def.fromSnapshot ||
          old.snapshot !== def.snapshot
        )
          b.step(
            'leave the running VMs as they are: only VMs made from now on take the new image, size or snapshot',
          );
      }
      b.change(`event: audit "pool ${def.name}: ${old ? 'updated' : 'created'}"`);
      return b.done();
    },

    delete(name: string): DryRunPlan {
      const pool = deps.checkDelete(name);
      const b = createPlan('pool.delete');
      b.admit(`pool ${name} found (image ${pool.image}, min ${pool.min}, max ${pool.max})`);
      b.step(`delete pool ${name}`);
      const n = deps.needs(name, undefined);
      for (const d of n.destroy) b.step(`kill and delete VM ${d.vm.name} (idle)`);
      const held = deps.members(name).filter((v) => deps.claimOf(v.id) !== undefined);
      for (const v of held)
        b.step(`kill and delete VM ${v.name} once its job ${deps.claimOf(v.id)} ends`);
      b.step(`clear pool ${name}'s retained state`);
      const gone = n.destroy.map((d) => d.vm);
      const parts = [
        ...(gone.length > 0
          ? [`VM${gone.length === 1 ? '' : 's'} ${names(gone)} killed and deleted`]
          : []),
        ...(held.length > 0
          ? [`VM${held.length === 1 ? '' : 's'} ${names(held)} after their jobs`]
          : []),
      ];
      b.change(`pool ${name}: deleted${parts.length > 0 ? `; ${parts.join('; ')}` : '; no VMs'}`);
      b.change(`event: audit "pool ${name}: deleted"`);
      return b.done();
    },
  };
}
