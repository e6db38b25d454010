/**
 * Metric roll-ups: one row per object (a VM id or `host`), resolution and
 * bucket. The roll-up module writes closed buckets; `query` re-aggregates them
 * to any coarser step in SQL, weighting averages by their sample counts.
 */
import type { Db } from './db.js';
import type { MetricPoint } from '../../protocol/metrics.js';

/** A finished bucket as the roll-up module hands it over (t in epoch seconds). */
export interface RollupRow {
  objectId: string;
  stepS: number;
  t: number;
  samples: number;
  cpuAvg: number;
  cpuMax: number;
  memUsedMiB: number;
  memTotalMiB: number;
  load1: number;
  diskUsedBytes: number;
  netRxBytes: number;
  netTxBytes: number;
}

export interface RollupQuery {
  objectId: string;
  /** The stored resolution to read. */
  stepS: number;
  /** Epoch seconds: buckets starting in [from, to). */
  from: number;
  to: number;
  /** Seconds per returned point (a multiple of stepS). */
  outStepS: number;
}

export function createMetricRepo(db: Db) {
  const upsert = db.prepare(`
    INSERT INTO metric_rollups (object_id, step_s, t, samples, cpu_avg, cpu_max, mem_used_mib,
      mem_total_mib, load1, disk_used_bytes, net_rx_bytes, net_tx_bytes)
    VALUES (@objectId, @stepS, @t, @samples, @cpuAvg, @cpuMax, @memUsedMiB, @memTotalMiB,
      @load1, @diskUsedBytes, @netRxBytes, @netTxBytes)
    ON CONFLICT (object_id, step_s, t) DO UPDATE SET
      -- A bucket flushed twice (daemon restart inside it): merge, weighted.
      cpu_avg = (cpu_avg * samples + excluded.cpu_avg * excluded.samples) / (samples + excluded.samples),
      mem_used_mib = (mem_used_mib * samples + excluded.mem_used_mib * excluded.samples) / (samples + excluded.samples),
      load1 = (load1 * samples + excluded.load1 * excluded.samples) / (samples + excluded.samples),
      cpu_max = max(cpu_max, excluded.cpu_max),
      mem_total_mib = excluded.mem_total_mib,
      disk_used_bytes = excluded.disk_used_bytes,
      net_rx_bytes = net_rx_bytes + excluded.net_rx_bytes,
      net_tx_bytes = net_tx_bytes + excluded.net_tx_bytes,
      samples = samples + excluded.samples`);
  const insertMany = db.transaction((rows: readonly RollupRow[]) => {
    for (const r of rows) upsert.run(r);
  });

  // Buckets are grouped into output steps by t - t % step (% is integer
  // arithmetic in SQLite whatever the binding; better-sqlite3 binds numbers as
  // REAL, so t / step would not truncate); averages are weighted by samples so
  // a half-empty bucket does not count double.
  const select = db.prepare(`
    SELECT t - (t % @outStepS) AS t,
           sum(samples) AS samples,
           sum(cpu_avg * samples) / sum(samples) AS cpuPercent,
           max(cpu_max) AS cpuMaxPercent,
           sum(mem_used_mib * samples) / sum(samples) AS memUsedMiB,
           max(mem_total_mib) AS memTotalMiB,
           sum(load1 * samples) / sum(samples) AS load1,
           max(disk_used_bytes) AS diskUsedBytes,
           sum(net_rx_bytes) AS netRxBytes,
           sum(net_tx_bytes) AS netTxBytes
    FROM metric_rollups
    WHERE object_id = @objectId AND step_s = @stepS AND t >= @from AND t < @to
    GROUP BY t - (t % @outStepS)
    ORDER BY 1`);
  const pruneStmt = db.prepare(`DELETE FROM metric_rollups WHERE step_s = ? AND t < ?`);
  const oldestStmt = db.prepare(
    `SELECT min(t) AS t FROM metric_rollups WHERE object_id = ? AND step_s = ?`,
  );

  return {
    write(rows: readonly RollupRow[]): void {
      if (rows.length > 0) insertMany(rows);
    },
    query(q: RollupQuery): MetricPoint[] {
      const rows = select.all(q) as MetricPoint[];
      for (const r of rows) r.t *= 1000;
      return rows;
    },
    /** Epoch seconds of the oldest stored bucket of this object at this resolution. */
    oldest(objectId: string, stepS: number): number | null {
      return (oldestStmt.get(objectId, stepS) as { t: number | null }).t;
    },
    /** Drop buckets of one resolution that start before `before` (epoch seconds). */
    prune(stepS: number, before: number): number {
      return pruneStmt.run(stepS, before).changes;
    },
  };
}

export type MetricRepo = ReturnType<typeof createMetricRepo>;
