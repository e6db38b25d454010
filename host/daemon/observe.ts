/**
 * The host's records (events, metric roll-ups, telemetry), and what watches
 * the host once it runs: Prometheus metrics fed by VM boots and
 * job ends, the retained status kicked on every VM change (and when the
 * uplink comes up or goes down), telemetry forgotten for VMs that ended.
 * Wired after recovery, so re-attached VMs are not counted as boots.
 */
import { isInactiveVm, isTerminalJob } from '../../protocol/states.js';
import type { JobManager } from '../jobs/manager.js';
import type { Topics } from '../../protocol/topics.js';
import type { Broker, Bus } from '../broker/types.js';
import { createEventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import { createHostSampler, type HostSampler } from '../metrics/host-sampler.js';
import { createPrometheus, type Prometheus } from '../metrics/prometheus.js';
import { createRollups, DEFAULT_RESOLUTIONS } from '../metrics/rollup.js';
import { createTelemetryHub, type TelemetryHub } from '../metrics/telemetry.js';
import type { Store } from '../store/index.js';
import type { Uplink } from '../uplink/link.js';
import type { VmManager } from '../vm/manager.js';
import type { DaemonOptions } from './options.js';
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

/** Roll-ups reach SQLite this often (and on every metrics.query). */
const ROLLUP_FLUSH_MS = 10_000;

/**
 * The host's records, made at start: the event log (pruned to its
 * retention), the metric roll-ups, the telemetry hub that feeds them, and the
 * host's own sampler. Each closes with the daemon (`cleanup`).
 */
export function createRecords(d: {
  opts: DaemonOptions;
  store: Store;
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  cleanup: (() => Promise<void> | void)[];
  rollupFlushMs?: number;
}) {
  const { opts, store, bus, topics, log } = d;
  const events = createEventLog({
    repo: store.events,
    bus,
    topics,
    log: log.child({ component: 'events' }),
    retention: {
      days: opts.eventsRetentionDays,
      maxRows: opts.eventsMaxRows,
      auditDays: opts.auditRetentionDays,
      auditMaxRows: opts.auditMaxRows,
    },
  });
  d.cleanup.unshift(() => events.close());
  events.prune();

  const rollups = createRollups({
    repo: store.metrics,
    log: log.child({ component: 'metrics' }),
    options: {
      resolutions: [
        DEFAULT_RESOLUTIONS[0]!,
        { ...DEFAULT_RESOLUTIONS[1]!, keepS: opts.metricsRetentionHours * 3600 },
      ],
      flushIntervalMs: d.rollupFlushMs ?? ROLLUP_FLUSH_MS,
    },
  });
  d.cleanup.unshift(() => rollups.close());
  const telemetry = createTelemetryHub({
    bus,
    topics,
    rollups,
    log: log.child({ component: 'metrics' }),
    size: (id) => store.vms.get(id),
  });
  const sampler = createHostSampler({ onSample: (f) => telemetry.host(f) });
  return { events, rollups, telemetry, sampler };
}
