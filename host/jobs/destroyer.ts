/**
 * Destroying the VMs that jobs and pools own (kill, then delete: they hold
 * nothing worth a graceful stop). One place for both managers: a second
 * request for a VM already on its way out is a no-op (a job's end and a
 * failed boot, or a pool's deletion and the next reconcile, both ask), and
 * `drain()` lets shutdown wait for the destroys under way before the store
 * closes. After `stop()` nothing new starts: recovery clears leftovers on the
 * next start.
 */
import type { MvirtLogger } from '../log.js';
import type { VmManager } from '../vm/manager.js';
import { MvirtError } from '../../protocol/errors.js';

export interface VmDestroyer {
  /** Kill and delete the VM; `after` runs once it is gone (or could not be removed). */
  destroy(vmId: string, why: string, after?: () => void): void;
  isDestroying(vmId: string): boolean;
  /** Start nothing new; resolve when the destroys under way are done. */
  drain(): Promise<void>;
}

export function createVmDestroyer(vms: VmManager, log: MvirtLogger): VmDestroyer {
  const destroying = new Set<string>();
  const inflight = new Set<Promise<void>>();
  let stopped = false;

  return {
    destroy(vmId, why, after) {
      if (stopped || destroying.has(vmId)) return;
      destroying.add(vmId);
      const p = (async () => {
        try {
          // Not "kill unless stopped": a VM whose boot has not reached admission
          // yet is still `stopped`, and a delete queued behind that boot found
          // it `starting` (VM_RUNNING). destroy() kills whatever the state.
          await vms.destroy(vmId);
          log.debug({ vmId, why }, 'VM destroyed');
        } catch (err) {
          if (!(err instanceof MvirtError && err.code === 'VM_NOT_FOUND'))
            log.error({ err, vmId, why }, 'cannot destroy a VM');
        } finally {
          destroying.delete(vmId);
          after?.();
        }
      })();
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    },
    isDestroying: (vmId) => destroying.has(vmId),
    async drain() {
      stopped = true;
      await Promise.allSettled([...inflight]);
    },
  };
}
