/**
 * The telemetry hub: each agent sample the VM manager validated is
 * republished on `vm/<id>/telemetry` (protocol VmTelemetry), remembered as the
 * VM's latest figures (for /metrics and status) and fed to the roll-ups. The
 * host's own samples go through `host()` into the same roll-ups under `host`.
 */
import type { Telemetry } from '../../protocol/agent.js';
import {
  HOST_OBJECT,
  METRIC_FIELD_NAMES,
  metricSource,
  type HostFigures,
  type MetricSample,
  type VmTelemetry,
} from '../../protocol/metrics.js';
import type { Topics } from '../../protocol/topics.js';
import type { Bus } from '../broker/types.js';
import type { MvirtLogger } from '../log.js';
import { clampTelemetry, type VmSize } from './bounds.js';
import type { Rollups } from './rollup.js';

export interface TelemetryHub {
  /** A validated agent sample of a running VM. */
  report(vmId: string, t: Telemetry): void;
  /** A host sample (from the host sampler). */
  host(f: HostFigures): void;
  latest(vmId: string): VmTelemetry | undefined;
  /** Every VM's latest sample. */
  all(): ReadonlyMap<string, VmTelemetry>;
  /** The VM stopped: its figures are no longer current. */
  forget(vmId: string): void;
}

/** The public payload: the agent's figures plus the host's receipt time and totals. */
export function toVmTelemetry(vmId: string, t: Telemetry, receivedAt: number): VmTelemetry {
  let diskUsedBytes = 0;
  let diskTotalBytes = 0;
  for (const d of t.disk) {
    diskUsedBytes += d.usedBytes;
    diskTotalBytes += d.totalBytes;
  }
  let netRxBytes = 0;
  let netTxBytes = 0;
  for (const n of t.net) {
    if (n.iface === 'lo') continue;
    netRxBytes += n.rxBytes;
    netTxBytes += n.txBytes;
  }
  // Spelled out rather than spread: this runs for every sample of every VM.
  return {
    at: t.at,
    cpuPercent: t.cpuPercent,
    memUsedMiB: t.memUsedMiB,
    memTotalMiB: t.memTotalMiB,
    load1: t.load1,
    load5: t.load5,
    load15: t.load15,
    uptimeS: t.uptimeS,
    procs: t.procs,
    disk: t.disk,
    net: t.net,
    ...(t.blockDevices ? { blockDevices: t.blockDevices } : {}),
    vmId,
    receivedAt,
    diskUsedBytes,
    diskTotalBytes,
    netRxBytes,
    netTxBytes,
  };
}

export function createTelemetryHub(deps: {
  bus: Bus;
  topics: Topics;
  rollups: Rollups;
  log: MvirtLogger;
  now?: () => number;
  /** The VM's size: figures above it are clamped (bounds.ts). */
  size?: (vmId: string) => VmSize | undefined;
}): TelemetryHub {
  const { bus, topics, rollups, log } = deps;
  const now = deps.now ?? Date.now;
  const latest = new Map<string, VmTelemetry>();

  return {
    report(vmId, sample) {
      const { t, clamped } = clampTelemetry(sample, deps.size?.(vmId));
      if (clamped.length) log.debug({ vmId, clamped }, 'guest figures above the VM size; clamped');
      const v = toVmTelemetry(vmId, t, now());
      latest.set(vmId, v);
      // QoS 0: a sample superseded a few seconds later is not worth a retry.
      bus.publish(topics.vmTelemetry(vmId), JSON.stringify(v), { qos: 0 }).catch((err: unknown) => {
        log.warn({ err, vmId }, 'telemetry publish failed');
      });
      rollups.add(vmId, v, v.receivedAt);
    },
    host(f) {
      // The host's own disk and network are not sampled (yet): those figures stay 0.
      const figures: Partial<MetricSample> = f;
      const sample = Object.fromEntries(
        METRIC_FIELD_NAMES.map(metricSource).map((m) => [m, figures[m] ?? 0]),
      ) as MetricSample;
      rollups.add(HOST_OBJECT, sample);
    },
    latest: (vmId) => latest.get(vmId),
    all: () => latest,
    forget(vmId) {
      latest.delete(vmId);
      rollups.forget(vmId);
    },
  };
}
