/**
 * The set of hypervisor backends as the VM manager sees it: lookup by name
 * and a cached probe (probing KVM takes up to its timeout, and the answer does
 * not change while the daemon runs).
 */
import type { MvirtLogger } from '../log.js';
import type { Hypervisor, ProbeResult } from '../hypervisors/types.js';

export interface HypervisorSet {
  get(name: string): Hypervisor | undefined;
  names(): string[];
  probe(name: string): Promise<ProbeResult>;
  /** The probe result once known (system.info answers without waiting). */
  probed(name: string): ProbeResult | undefined;
}

export function createHypervisorSet(list: readonly Hypervisor[], log: MvirtLogger): HypervisorSet {
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
