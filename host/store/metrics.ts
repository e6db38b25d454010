/**
 * Metric roll-ups: one row per object (a VM id or `host`), resolution and
 * bucket. The roll-up module writes closed buckets; `query` re-aggregates them
 * to any coarser step in SQL, weighting averages by their sample counts.
 */
import type { Db } from './db.js';
import {
  METRIC_FIELD_NAMES,
  METRIC_FIELDS,
  type MetricField,
  type MetricPoint,
} from '../../protocol/metrics.js';

/** A finished bucket as the roll-up module hands it over (t in epoch seconds). */
export type RollupRow = {
  objectId: string;
  stepS: number;
  t: number;
  samples: number;
} & Record<MetricField, number>;

/** The metric_rollups column of each field (names from the first schema: migrations.ts). */
const COLUMN: Readonly<Record<MetricField, string>> = {
  cpuPercent: 'cpu_avg',
  cpuMaxPercent: 'cpu_max',
  memUsedMiB: 'mem_used_mib',
  memTotalMiB: 'mem_total_mib',
  load1: 'load1',
  diskUsedBytes: 'disk_used_bytes',
  netRxBytes: 'net_rx_bytes',
  netTxBytes: 'net_tx_bytes',
};

/** A bucket written twice (a flush inside a bucket, a daemon restart inside it): merged by fold. */
const merge = (f: MetricField): string => {
  const c = COLUMN[f];
  switch (METRIC_FIELDS[f].fold) {
    case 'avg':
      return `${c} = (${c} * samples + excluded.${c} * excluded.samples) / (samples + excluded.samples)`;
    case 'max':
      return `${c} = max(${c}, excluded.${c})`;
    case 'last':
      return `${c} = excluded.${c}`;
    case 'delta':
      return `${c} = ${c} + excluded.${c}`;
  }
};

/** Buckets grouped into a coarser step: averages weighted by samples, `last` as the largest. */
const aggregate = (f: MetricField): string => {
  const c = COLUMN[f];
  switch (METRIC_FIELDS[f].fold) {
    case 'avg':
      return `sum(${c} * samples) / sum(samples) AS ${f}`;
    case 'max':
    case 'last':
      return `max(${c}) AS ${f}`;
    case 'delta':
      return `sum(${c}) AS ${f}`;
  }
};

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
  const columns = METRIC_FIELD_NAMES.map((f) => COLUMN[f]).join(', ');
  const params = METRIC_FIELD_NAMES.map((f) => `@${f}`).join(', ');
  const upsert = db.prepare(`
    INSERT INTO metric_rollups (object_id, step_s, t, samples, ${columns})
    VALUES (@objectId, @stepS, @t, @samples, ${params})
    ON CONFLICT (object_id, step_s, t) DO UPDATE SET
      ${METRIC_FIELD_NAMES.map(merge).join(',\n      ')},
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
           ${METRIC_FIELD_NAMES.map(aggregate).join(',\n           ')}
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
