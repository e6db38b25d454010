/**
 * What watches the host once it runs: Prometheus metrics fed by VM boots and
 * job ends, the retained status kicked on every VM change (and when the
 * uplink comes up or goes down), telemetry forgotten for VMs that ended.
 * Wired after recovery, so re-attached VMs are not counted as boots.
 */
import { isInactiveVm, isTerminalJob } from '../../protocol/states.js';
import type { JobManager } from '../jobs/manager.js';
import type { HostSampler } from '../metrics/host-sampler.js';
import { createPrometheus, type Prometheus } from '../metrics/prometheus.js';
import type { TelemetryHub } from '../metrics/telemetry.js';
import type { Broker } from '../broker/types.js';
import type { Uplink } from '../uplink/link.js';
import type { VmManager } from '../vm/manager.js';
import type { StatusPublisher } from './status.js';

export function observeHost(d: {
  hostId: string;
  host: { cpus: number; memoryMiB: number };
  sampler: HostSampler;
  vms: VmManager;
  jobs: JobManager;
  telemetry: TelemetryHub;
  broker: Broker;
  status: StatusPublisher;
  uplink: Uplink | null;
}): Prometheus {
  const prometheus = createPrometheus({
    hostId: d.hostId,
    host: d.host,
    figures: () => d.sampler.sample(),
    vms: d.vms,
    telemetry: (id) => d.telemetry.latest(id),
    jobs: () => d.jobs.countByState(),
    broker: () => d.broker.stats(),
  });
  d.vms.onStateChange((rec, from) => {
    d.status.kick();
    if (rec.state === 'ready' && from === 'starting') prometheus.observeBoot(rec);
    if (isInactiveVm(rec.state)) d.telemetry.forget(rec.id);
  });
  d.jobs.onStateChange((rec) => {
    if (isTerminalJob(rec.state)) prometheus.observeJob(rec);
  });
  // The status carries the uplink's figures: say at once that it came up or went down.
  d.uplink?.onChange(() => d.status.kick());
  return prometheus;
}
