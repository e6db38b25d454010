/** system.info: host facts, allocation, limits, backends, VM counts, images. */
import type { SystemInfo } from '../../../protocol/rpc.js';
import type { ProbeResult } from '../../hypervisors/types.js';
import type { HypervisorRegistry } from '../../hypervisors/index.js';
import type { ImageStore } from '../../vm/images.js';
import type { VmManager } from '../../vm/manager.js';
import type { Handlers } from '../types.js';
import type { Capacity } from '../../volumes/capacity.js';

export interface SystemDeps {
  host: { hostId: string; version: string; cpus: number; memoryMiB: number };
  /** mvirtd --label K=V. */
  labels?: Record<string, string>;
  limits: SystemInfo['limits'];
  vms: Pick<VmManager, 'allocated' | 'countByState'>;
  hypervisors: HypervisorRegistry;
  images: ImageStore;
  /** Volume storage figures; absent where no volume store runs. */
  storage?: Pick<Capacity, 'info'>;
  /** The uplink's figures, when mvirtd runs with --uplink. */
  uplink?: () => NonNullable<SystemInfo['uplink']>;
}

/**
 * Synchronous when the backend probes and the image listing are cached (the
 * usual case): system.info is the round trip controllers poll most.
 */
export function systemInfo(d: SystemDeps): SystemInfo | Promise<SystemInfo> {
  const names = d.hypervisors.names();
  const probes = names.map((n) => d.hypervisors.probed(n));
  const images = d.images.listCached();
  if (images && probes.every((p) => p !== undefined)) {
    return build(d, names, probes as ProbeResult[], images);
  }
  return Promise.all([Promise.all(names.map((n) => d.hypervisors.probe(n))), d.images.list()]).then(
    ([p, i]) => build(d, names, p, i),
  );
}

function build(
  d: SystemDeps,
  names: string[],
  probes: ProbeResult[],
  images: string[],
): SystemInfo {
  const a = d.vms.allocated();
  return {
    ...d.host,
    allocated: { vcpus: a.vcpus, memoryMiB: a.memoryMiB },
    limits: d.limits,
    backends: names.map((name, i) => {
      const p = probes[i]!;
      const c = d.hypervisors.get(name)!.capabilities;
      return {
        name,
        available: p.available,
        accel: p.accel,
        ...(p.reason ? { reason: p.reason } : {}),
        ...(p.version ? { version: p.version } : {}),
        capabilities: {
          channels: [...c.channels],
          pause: c.pause,
          reboot: c.reboot,
          gracefulShutdown: c.gracefulShutdown,
          console: c.console,
          directKernelBoot: c.directKernelBoot,
          kernelFormats: [...c.kernelFormats],
          hotplugDisks: c.hotplugDisks,
          liveDiskSnapshots: c.liveDiskSnapshots === true,
          snapshots: c.snapshots === true,
          forks: c.forks === true,
          accel: [...c.accel],
        },
        ...(p.confinement ? { confinement: p.confinement } : {}),
      };
    }),
    vms: d.vms.countByState(),
    images,
    ...(d.storage ? { storage: d.storage.info() } : {}),
    ...(d.labels && Object.keys(d.labels).length > 0 ? { labels: d.labels } : {}),
    ...(d.uplink ? { uplink: d.uplink() } : {}),
  };
}

export const systemHandlers = (d: SystemDeps): Handlers<'system.info'> => ({
  'system.info': () => systemInfo(d),
});
