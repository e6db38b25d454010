/**
 * The hypervisor registry: every backend compiled into mvirtd, by name, with
 * a cached probe each. Each backend is one folder behind the Hypervisor
 * interface; callers pick by name and look at `capabilities` and `probe()`,
 * never at which backend it is.
 */
import type { Logger } from 'pino';
import { MvirtError } from '../../protocol/errors.js';
import type { Channel } from '../../protocol/agent.js';
import type { MvirtLogger } from '../log.js';
import { createQemuBackend, type QemuBackendOptions } from './qemu/backend.js';
import {
  createCloudHypervisorBackend,
  type CloudHypervisorOptions,
} from './cloud-hypervisor/backend.js';
import { createFirecrackerBackend, type FirecrackerOptions } from './firecracker/backend.js';
import type { Capability, Hypervisor, ProbeResult } from './types.js';

export interface HypervisorsOptions {
  qemu?: QemuBackendOptions | false;
  cloudHypervisor?: CloudHypervisorOptions | false;
  firecracker?: FirecrackerOptions | false;
  /** These backends instead of the compiled-in ones (test doubles). */
  backends?: readonly Hypervisor[];
}

export interface HypervisorRegistry {
  get(name: string): Hypervisor | undefined;
  names(): string[];
  /**
   * Can this backend run VMs here? Cached: probing KVM takes up to its
   * timeout, and the answer does not change while the daemon runs.
   */
  probe(name: string): Promise<ProbeResult>;
  /** The probe result once known (system.info answers without waiting). */
  probed(name: string): ProbeResult | undefined;
}

/** The backends this build knows. Construction is cheap and does not probe. */
export function createHypervisorRegistry(
  opts: HypervisorsOptions,
  log: MvirtLogger,
): HypervisorRegistry {
  const list: Hypervisor[] = [];
  // Backends take a plain pino Logger; ours only adds the `audit` level.
  const plain = log as unknown as Logger;
  if (opts.backends) list.push(...opts.backends);
  else {
    if (opts.qemu !== false) list.push(createQemuBackend(opts.qemu ?? {}, plain));
    if (opts.cloudHypervisor !== false)
      list.push(createCloudHypervisorBackend(opts.cloudHypervisor ?? {}, plain));
    if (opts.firecracker !== false)
      list.push(createFirecrackerBackend(opts.firecracker ?? {}, plain));
  }
  const byName = new Map(list.map((h) => [h.name, h]));
  const probes = new Map<string, Promise<ProbeResult>>();
  const results = new Map<string, ProbeResult>();
  return {
    get: (name) => byName.get(name),
    names: () => [...byName.keys()],
    probe(name) {
      let p = probes.get(name);
      if (!p) {
        const hv = byName.get(name);
        p = hv
          ? hv.probe().catch((err: unknown) => {
              log.warn({ backend: name, err }, 'hypervisor probe failed');
              return { available: false, accel: null, reason: String(err) };
            })
          : Promise.resolve({ available: false, accel: null, reason: 'unknown backend' });
        void p.then((r) => results.set(name, r));
        probes.set(name, p);
      }
      return p;
    },
    probed: (name) => results.get(name),
  };
}

const CAPABILITY_TEXT: Record<Capability, string> = {
  pause: 'pause or resume a VM',
  reboot: 'reboot a VM',
  gracefulShutdown: 'ask a guest to power off',
  console: 'attach a serial console',
  directKernelBoot: 'boot a kernel and initrd directly',
  hotplugDisks: 'add or remove disks of a running VM',
  liveDiskSnapshots: "snapshot a running VM's disk",
  snapshots: "save a VM's memory and device state and resume from it",
  forks: 'resume a saved state as another VM (its guest cannot learn its new identity)',
};

/**
 * Checked before an operation: a backend is never asked for what it lacks,
 * the caller gets CAPABILITY_UNSUPPORTED naming the backend instead.
 */
export function requireCapability(hv: Hypervisor, cap: Capability): void {
  if (hv.capabilities[cap]) return;
  throw new MvirtError(
    'CAPABILITY_UNSUPPORTED',
    `backend ${hv.name} cannot ${CAPABILITY_TEXT[cap]}; create the VM on a backend that can`,
    { details: { backend: hv.name, capability: cap } },
  );
}

/** The agent channel a VM asks for must be one the backend provides. */
export function requireChannel(hv: Hypervisor, channel: Channel): void {
  if (hv.capabilities.channels.includes(channel)) return;
  throw new MvirtError(
    'CAPABILITY_UNSUPPORTED',
    `backend ${hv.name} has no ${channel} agent channel (it has ${hv.capabilities.channels.join(', ') || 'none'}); choose another network mode or backend`,
    { details: { backend: hv.name, capability: 'channels', channel } },
  );
}

export type { Hypervisor } from './types.js';
export { createBoundedLog, type BoundedLog } from './console-log.js';
