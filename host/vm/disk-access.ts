/**
 * What the volume manager may ask of the VMs holding a volume, for changes
 * made to a volume's file while it is attached (disk snapshots): hold their
 * lifecycle locks so none boots or stops meanwhile, see whether a hypervisor
 * has the file open, and have that hypervisor take or delete a snapshot live.
 * The backend is asked only through its capabilities and RunningVm.
 */
import { requireCapability } from '../hypervisors/index.js';
import { MvirtError } from '../../protocol/errors.js';
import type { PlanCommand } from '../../protocol/plan.js';
import type { VmContext } from './context.js';

export function vmDiskAccess(ctx: VmContext) {
  /** The VM's running hypervisor that can snapshot its disks live, or why not. */
  function live(id: string) {
    const vm = ctx.find(id);
    const hv = ctx.hypervisors.get(vm.backend);
    if (hv) requireCapability(hv, 'liveDiskSnapshots');
    const l = ctx.liveOf(id);
    const running = l?.running;
    if (!l || !running)
      throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} has no running hypervisor process`);
    const snapshot = running.diskSnapshot?.bind(running);
    if (!snapshot)
      throw new MvirtError(
        'CAPABILITY_UNSUPPORTED',
        `backend ${vm.backend} cannot snapshot a running VM's disk`,
        { details: { backend: vm.backend, capability: 'liveDiskSnapshots' } },
      );
    return { hv: l.hv, snapshot };
  }

  return {
    /**
     * Run fn under these VMs' lifecycle locks, taken in id order so two
     * callers never hold one each while waiting for the other's.
     */
    withVmLocks<T>(ids: readonly string[], fn: () => Promise<T>): Promise<T> {
      const sorted = [...new Set(ids)].sort();
      const at = (i: number): Promise<T> =>
        i === sorted.length ? fn() : ctx.withLock(sorted[i]!, () => at(i + 1));
      return at(0);
    },

    /** Whether the VM's hypervisor process runs (launched or re-attached): its disks are open. */
    hasProcess: (id: string): boolean => ctx.liveOf(id) !== undefined,

    /**
     * Take or delete a snapshot of the disk named `file` in the VM's running
     * hypervisor. CAPABILITY_UNSUPPORTED when its backend cannot; call it
     * under withVmLocks so the process cannot be replaced meanwhile.
     */
    async diskSnapshot(
      id: string,
      action: 'create' | 'delete',
      file: string,
      name: string,
    ): Promise<void> {
      await live(id).snapshot(action, file, name);
    },

    /** diskSnapshot's dry run: the same checks, then what the backend would send. */
    planDiskSnapshot(
      id: string,
      action: 'create' | 'delete',
      file: string,
      name: string,
    ): PlanCommand[] {
      return live(id).hv.plans?.diskSnapshot(action, file, name) ?? [];
    },
  };
}

export type VmDiskAccess = ReturnType<typeof vmDiskAccess>;
