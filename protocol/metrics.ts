/**
 * Fleet telemetry on the public topics: what the host republishes of each
 * agent's figures (`vm/<id>/telemetry`), the host figures inside the retained
 * `status`, and the roll-ups `metrics.query` returns. Dashboards and `mvirt
 * top` validate what they receive with these schemas, so a daemon and a
 * client that disagree fail loudly instead of drawing nonsense.
 */
import { z } from 'zod';
import { Telemetry } from './agent.js';

const nonneg = z.number().finite().nonnegative();

/**
 * `vm/<id>/telemetry`: the agent's sample as validated by the host, plus the
 * VM id, the host's receipt time (guest clocks drift; charts use this one)
 * and totals a viewer would otherwise have to compute from the arrays.
 */
export const VmTelemetry = Telemetry.extend({
  vmId: z.string().min(1).max(64),
  /** Host clock, epoch milliseconds, when the daemon received the sample. */
  receivedAt: nonneg,
  /** Sum over the reported filesystems. */
  diskUsedBytes: nonneg,
  diskTotalBytes: nonneg,
  /** Counters since the guest booted, summed over interfaces other than `lo`. */
  netRxBytes: nonneg,
  netTxBytes: nonneg,
}).strict();
export type VmTelemetry = z.infer<typeof VmTelemetry>;

/** The host's own figures, sampled by mvirtd (inside `status` as `figures`). */
export const HostFigures = z.strictObject({
  /** Busy share of all host CPUs since the previous sample, 0–100 × cpus. */
  cpuPercent: nonneg,
  memUsedMiB: nonneg,
  memTotalMiB: nonneg,
  load1: nonneg,
  load5: nonneg,
  load15: nonneg,
  uptimeS: nonneg,
  /** mvirtd itself: CPU since the previous sample (100 = one core) and resident memory. */
  daemon: z.strictObject({ cpuPercent: nonneg, rssMiB: nonneg }),
});
export type HostFigures = z.infer<typeof HostFigures>;

/** The embedded broker's counters (inside `status` as `broker`). */
export const BrokerFigures = z.strictObject({
  clients: z.number().int().nonnegative(),
  messagesIn: nonneg,
  messagesOut: nonneg,
  inPerSec: nonneg,
  outPerSec: nonneg,
});
export type BrokerFigures = z.infer<typeof BrokerFigures>;

const count = z.number().int().nonnegative();

/**
 * The retained `<root>/status`. Everything but `hostId`, `online` and `at`
 * is absent in the last will (`online:false`).
 */
export const HostStatus = z.strictObject({
  hostId: z.string(),
  online: z.boolean(),
  at: z.string(),
  version: z.string().optional(),
  cpus: count.optional(),
  memoryMiB: count.optional(),
  allocated: z.strictObject({ vcpus: count, memoryMiB: count }).optional(),
  limits: z.strictObject({ vcpus: count, memoryMiB: count, maxVms: count }).optional(),
  backends: z
    .array(
      z.strictObject({
        name: z.string(),
        available: z.boolean(),
        accel: z.string().nullable(),
        reason: z.string().optional(),
      }),
    )
    .optional(),
  vms: z.record(z.string(), count).optional(),
  images: z.array(z.string()).optional(),
  figures: HostFigures.optional(),
  broker: BrokerFigures.optional(),
  /** Jobs by state (terminal states count what the store still holds). */
  jobs: z.record(z.string(), count).optional(),
});
export type HostStatus = z.infer<typeof HostStatus>;

/** The object id roll-ups of the host itself are kept under (VMs use their id). */
export const HOST_OBJECT = 'host';

/** Roll-up resolutions the daemon keeps, finest first (seconds per bucket). */
export const ROLLUP_STEPS = [10, 60] as const;

/** One bucket of a roll-up series: averages over the samples that fell in it. */
export interface MetricPoint {
  /** Bucket start, epoch milliseconds. */
  t: number;
  /** Samples averaged into this bucket. */
  samples: number;
  cpuPercent: number;
  cpuMaxPercent: number;
  memUsedMiB: number;
  memTotalMiB: number;
  load1: number;
  /** The last reported value in the bucket. */
  diskUsedBytes: number;
  /** Bytes received / sent during the bucket (counter deltas; a guest reboot restarts them). */
  netRxBytes: number;
  netTxBytes: number;
}

export interface MetricsResult {
  /** `host` or the VM's id. */
  object: string;
  /** Seconds per returned point. */
  step: number;
  /** The stored resolution the points were computed from (10 or 60 s). */
  resolution: number;
  /** Buckets with data, oldest first; gaps are left out. */
  points: MetricPoint[];
}

/** Most points one metrics.query may return (ask with a larger step beyond that). */
export const METRICS_MAX_POINTS = 10_000;
