/**
 * Fleet telemetry on the public topics: what the host republishes of each
 * agent's figures (`vm/<id>/telemetry`), the host figures inside the retained
 * `status` (protocol/records.ts HostStatus), and the roll-ups `metrics.query`
 * returns. Dashboards and `mvirt
 * top` validate what they receive with these schemas, so a daemon and a
 * client that disagree fail loudly instead of drawing nonsense.
 */
import * as z from 'zod';
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

/** The object id roll-ups of the host itself are kept under (VMs use their id). */
export const HOST_OBJECT = 'host';

/** Roll-up resolutions the daemon keeps, finest first (seconds per bucket). */
export const ROLLUP_STEPS = [10, 60] as const;

/**
 * How a figure is folded into a roll-up bucket and re-aggregated to a coarser
 * step: `avg` weighted by samples, `max`, `last` (the newest value; a coarser
 * step takes the largest), `delta` (a counter since boot, kept as the sum of
 * its increases: a counter that goes down was restarted by a guest reboot).
 */
export type MetricFold = 'avg' | 'max' | 'last' | 'delta';

/**
 * The figures of a roll-up bucket: the one list that MetricPoint, the roll-up
 * (host/metrics/rollup.ts), its SQLite table (host/store/metrics.ts) and the
 * generated docs derive from. `of` names the sampled figure a field is
 * computed from when it is not sampled under its own name.
 */
export const METRIC_FIELDS = {
  cpuPercent: { fold: 'avg', description: 'average (100 = one CPU)' },
  cpuMaxPercent: { fold: 'max', of: 'cpuPercent', description: 'highest sample' },
  memUsedMiB: { fold: 'avg', description: 'average' },
  memTotalMiB: { fold: 'last', description: 'last value in the bucket' },
  load1: { fold: 'avg', description: 'average' },
  diskUsedBytes: { fold: 'last', description: 'last value in the bucket' },
  netRxBytes: { fold: 'delta', description: 'bytes received during the bucket' },
  netTxBytes: { fold: 'delta', description: 'bytes sent during the bucket' },
} as const satisfies Record<string, { fold: MetricFold; of?: string; description: string }>;

export type MetricField = keyof typeof METRIC_FIELDS;
export const METRIC_FIELD_NAMES = Object.keys(METRIC_FIELDS) as MetricField[];

/** The figure a field is computed from (itself unless `of` says otherwise). */
export const metricSource = (f: MetricField): SampledMetric => {
  const d = METRIC_FIELDS[f] as { of?: string };
  return (d.of ?? f) as SampledMetric;
};
/** The figures a roll-up sample carries: every field that is not computed from another. */
export type SampledMetric = {
  [K in MetricField]: (typeof METRIC_FIELDS)[K] extends { of: string } ? never : K;
}[MetricField];
export type MetricSample = Record<SampledMetric, number>;

/** One bucket of a roll-up series: averages over the samples that fell in it. */
export const MetricPoint = z.strictObject({
  t: nonneg.describe('bucket start, epoch milliseconds'),
  samples: z.number().int().nonnegative().describe('samples averaged into this bucket'),
  ...(Object.fromEntries(
    METRIC_FIELD_NAMES.map((f) => [f, z.number().finite().describe(METRIC_FIELDS[f].description)]),
  ) as Record<MetricField, z.ZodNumber>),
});
export type MetricPoint = z.infer<typeof MetricPoint>;

export const MetricsResult = z.strictObject({
  object: z.string().describe('host, or the VM id'),
  step: z.number().int().positive().describe('seconds per point'),
  resolution: z.number().int().positive().describe('stored roll-up read: 10 or 60 s'),
  points: z.array(MetricPoint).describe('buckets with data, oldest first; gaps left out'),
});
export type MetricsResult = z.infer<typeof MetricsResult>;

/** Most points one metrics.query may return (ask with a larger step beyond that). */
export const METRICS_MAX_POINTS = 10_000;
