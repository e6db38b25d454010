/**
 * Roll-ups of telemetry into fixed buckets (DESIGN: 10 s for an hour, 1 min
 * for a day by default), kept in SQLite and answered by `metrics.query`.
 *
 * Samples are summed in memory per object and resolution; every flush writes
 * each bucket that got samples since the previous flush, open ones included,
 * and the store merges a bucket written twice (weighted by samples). So a
 * query can flush first and see the current bucket, and nothing is kept in
 * memory beyond one bucket per object and resolution.
 */
import { MvirtError } from '../../protocol/errors.js';
import {
  METRIC_FIELD_NAMES,
  METRIC_FIELDS,
  METRICS_MAX_POINTS,
  ROLLUP_STEPS,
  metricSource,
  type MetricField,
  type MetricSample,
  type MetricsResult,
} from '../../protocol/metrics.js';
import type { MvirtLogger } from '../log.js';
import type { MetricRepo, RollupRow } from '../store/index.js';

/** One sample of the figures METRIC_FIELDS lists (counters since boot; the roll-up keeps deltas). */
export type RollupSample = MetricSample;

export interface Resolution {
  stepS: number;
  /** Buckets older than this are pruned. */
  keepS: number;
}

export const DEFAULT_RESOLUTIONS: readonly Resolution[] = [
  { stepS: ROLLUP_STEPS[0], keepS: 3600 },
  { stepS: ROLLUP_STEPS[1], keepS: 86_400 },
];

export interface RollupOptions {
  resolutions: readonly Resolution[];
  flushIntervalMs: number;
}

export interface Rollups {
  add(objectId: string, s: RollupSample, atMs?: number): void;
  /** The object stopped reporting (VM stopped): its next counters start afresh. */
  forget(objectId: string): void;
  /** Write what was gathered since the last flush (one transaction). */
  flush(): void;
  query(q: { objectId: string; fromMs: number; toMs: number; stepS?: number }): MetricsResult;
  close(): void;
}

interface Bucket {
  t: number;
  n: number;
  /** Per field as its fold says: avg a sum, max the maximum, last the value, delta a sum of deltas. */
  v: Record<MetricField, number>;
}

interface ObjectState {
  /** The last value of each `delta` counter. */
  counters: Partial<Record<MetricField, number>>;
  /** Indexed like the resolutions. */
  buckets: (Bucket | null)[];
}

const PRUNE_EVERY_MS = 60_000;

/** A counter delta; a counter that went down was restarted (guest reboot). */
const delta = (cur: number, last: number | undefined): number =>
  last === undefined ? 0 : cur >= last ? cur - last : cur;

const zeros = (): Record<MetricField, number> =>
  Object.fromEntries(METRIC_FIELD_NAMES.map((f) => [f, 0])) as Record<MetricField, number>;

/** A written bucket starts over; `last` values carry on (they are not sums). */
const restart = (v: Record<MetricField, number>): Record<MetricField, number> =>
  Object.fromEntries(
    METRIC_FIELD_NAMES.map((f) => [f, METRIC_FIELDS[f].fold === 'last' ? v[f] : 0]),
  ) as Record<MetricField, number>;

export function createRollups(deps: {
  repo: MetricRepo;
  log: MvirtLogger;
  options: RollupOptions;
  now?: () => number;
}): Rollups {
  const { repo, log, options } = deps;
  const now = deps.now ?? Date.now;
  const res = [...options.resolutions].sort((a, b) => a.stepS - b.stepS);
  const objects = new Map<string, ObjectState>();
  let lastPrune = 0;

  function flush(): void {
    const rows: RollupRow[] = [];
    for (const [objectId, o] of objects) {
      o.buckets.forEach((b, i) => {
        if (!b || b.n === 0) return;
        const values = Object.fromEntries(
          METRIC_FIELD_NAMES.map((f) => [
            f,
            METRIC_FIELDS[f].fold === 'avg' ? b.v[f] / b.n : b.v[f],
          ]),
        ) as Record<MetricField, number>;
        rows.push({ objectId, stepS: res[i]!.stepS, t: b.t, samples: b.n, ...values });
        // Written: later samples of the same bucket are merged by the store.
        o.buckets[i] = { t: b.t, n: 0, v: restart(b.v) };
      });
    }
    const t = now();
    try {
      repo.write(rows);
      if (t - lastPrune >= PRUNE_EVERY_MS) {
        lastPrune = t;
        for (const r of res) repo.prune(r.stepS, Math.floor(t / 1000) - r.keepS);
      }
    } catch (err) {
      // Losing a few seconds of history is better than failing telemetry.
      log.warn({ err, rows: rows.length }, 'cannot write metric roll-ups');
    }
  }

  const timer = setInterval(flush, options.flushIntervalMs);
  timer.unref();

  /** The stored resolution a query reads: the finest that still holds `from`. */
  function pick(fromMs: number, stepS: number | undefined): { r: Resolution; out: number } {
    const ageS = (now() - fromMs) / 1000;
    const fits = (r: Resolution): boolean =>
      r.keepS >= ageS && (stepS === undefined || stepS >= r.stepS);
    const r =
      (stepS === undefined
        ? res.find(fits)
        : // The coarsest that divides the step: fewer rows to group.
          [...res].reverse().find((x) => fits(x) && stepS % x.stepS === 0)) ??
      res.find(fits) ??
      res[res.length - 1]!;
    const out = stepS === undefined ? r.stepS : Math.ceil(stepS / r.stepS) * r.stepS;
    return { r, out };
  }

  return {
    add(objectId, s, atMs = now()) {
      let o = objects.get(objectId);
      if (!o) {
        o = { counters: {}, buckets: res.map(() => null) };
        objects.set(objectId, o);
      }
      const deltas: Partial<Record<MetricField, number>> = {};
      for (const f of METRIC_FIELD_NAMES) {
        if (METRIC_FIELDS[f].fold !== 'delta') continue;
        const x = s[metricSource(f)];
        deltas[f] = delta(x, o.counters[f]);
        o.counters[f] = x;
      }
      const sec = Math.floor(atMs / 1000);
      res.forEach((r, i) => {
        const t = sec - (sec % r.stepS);
        let b = o.buckets[i];
        if (b && b.t !== t && b.n > 0) {
          // The bucket closed with samples not yet written: write them now.
          flush();
          b = o.buckets[i];
        }
        if (!b || b.t !== t) {
          b = { t, n: 0, v: zeros() };
          o.buckets[i] = b;
        }
        b.n++;
        for (const f of METRIC_FIELD_NAMES) {
          const x = s[metricSource(f)];
          switch (METRIC_FIELDS[f].fold) {
            case 'avg':
              b.v[f] += x;
              break;
            case 'max':
              b.v[f] = Math.max(b.v[f], x);
              break;
            case 'last':
              b.v[f] = x;
              break;
            case 'delta':
              b.v[f] += deltas[f]!;
              break;
          }
        }
      });
    },
    forget(objectId) {
      if (objects.has(objectId)) flush();
      objects.delete(objectId);
    },
    flush,
    query({ objectId, fromMs, toMs, stepS }) {
      if (!(toMs > fromMs))
        throw new MvirtError('INVALID_PARAMS', 'metrics.query: to must be later than from');
      const { r, out } = pick(fromMs, stepS);
      const from = Math.floor(fromMs / 1000);
      const to = Math.ceil(toMs / 1000);
      const n = Math.ceil((to - from) / out);
      if (n > METRICS_MAX_POINTS)
        throw new MvirtError(
          'INVALID_PARAMS',
          `metrics.query: ${n} points of ${out} s; at most ${METRICS_MAX_POINTS} (ask with a larger step)`,
          { details: { points: n, max: METRICS_MAX_POINTS } },
        );
      flush();
      // Buckets that start before `from` but reach into the range count too.
      const start = from - (from % out);
      return {
        object: objectId,
        step: out,
        resolution: r.stepS,
        points: repo.query({ objectId, stepS: r.stepS, from: start, to, outStepS: out }),
      };
    },
    close() {
      clearInterval(timer);
      flush();
    },
  };
}
