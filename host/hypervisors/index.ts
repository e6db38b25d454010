/**
 * The hypervisor registry: every backend compiled into mvirtd, by name. Each
 * backend is one folder behind the Hypervisor interface; callers pick by name
 * and look at `capabilities` and `probe()`, never at which backend it is.
 * cloud-hypervisor and firecracker will be added here the same way.
 */
import type { Logger } from 'pino';
import { createQemuBackend, type QemuBackendOptions } from './qemu/backend.js';
import type { Hypervisor } from './types.js';

export interface HypervisorsOptions {
  qemu?: QemuBackendOptions | false;
}

/**
 * The backends this build knows, by name. Construction is cheap and does not
 * probe: call `probe()` (cached per backend instance, i.e. per daemon run) to
 * learn whether a backend can run VMs here.
 */
export function createHypervisors(opts: HypervisorsOptions, log: Logger): Map<string, Hypervisor> {
  const backends = new Map<string, Hypervisor>();
  if (opts.qemu !== false) {
    const qemu = createQemuBackend(opts.qemu ?? {}, log);
    backends.set(qemu.name, qemu);
  }
  return backends;
}

export type { Hypervisor } from './types.js';
export { createBoundedLog, type BoundedLog } from './console-log.js';
