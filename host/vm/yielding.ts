/**
 * Yielding VMs: VMs mvirtd keeps on its own account (idle spares,
 * host/jobs/spares.ts) that give way to any other VM. Admission counts their
 * room as free by default, so a job, a pool or a user's vm.create is never
 * refused for it; a boot that needs the room destroys as many of them as it
 * must first, then checks and reserves as always (boot.ts's admission step).
 * A yielding VM's own boot counts every other one as held: spares never
 * displace each other.
 */
import type { VmRecord } from '../../protocol/rpc.js';
import { isInactiveVm } from '../../protocol/states.js';
import type { Reserved, VmContext } from './context.js';

export interface YieldingVms {
  /** Their ids (starting ones too). */
  ids(): string[];
  /** Destroy these; resolves once they are gone. */
  release(ids: string[], why: string): Promise<void>;
}

/** free: their room counts as free (what a boot can have); held: as held (what fits without them). */
export type YieldingMode = 'free' | 'held';

export function yieldingPart(ctx: VmContext) {
  /** What these VMs hold now (those not stopped or failed). */
  function heldBy(ids: readonly string[]): Reserved {
    const r = { vms: 0, vcpus: 0, memoryMiB: 0 };
    for (const id of ids) {
      const v = ctx.vms.get(id);
      if (!v || isInactiveVm(v.state)) continue;
      r.vms++;
      r.vcpus += v.vcpus;
      r.memoryMiB += v.memoryMiB;
    }
    return r;
  }

  /** The VMs whose room counts as free in this mode. */
  const freeIn = (mode: YieldingMode): string[] =>
    mode === 'free' ? (ctx.yielding?.ids() ?? []) : [];

  /**
   * Before `vm`'s admission: if it fits only once yielding VMs go, destroy
   * the fewest of them (in the order given) that make it fit. `problem`:
   * the admission check with these VMs' room counted as free.
   */
  async function makeRoom(
    vm: VmRecord,
    problem: (free: string[]) => unknown | null,
  ): Promise<void> {
    const y = ctx.yielding;
    if (!y) return;
    const ids = y.ids();
    if (ids.includes(vm.id) || problem([]) === null) return;
    // Not even with all of them gone: admission says why, nothing destroyed.
    if (problem(ids) !== null) return;
    const chosen: string[] = [];
    for (const id of ids) {
      chosen.push(id);
      if (problem(chosen) === null) break;
    }
    await y.release(chosen, `room for VM ${vm.name}`);
  }

  return { heldBy, freeIn, makeRoom };
}
