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
import { METRICS_MAX_POINTS, ROLLUP_STEPS, type MetricsResult } from '../../protocol/metrics.js';
import type { MvirtLogger } from '../log.js';
import type { MetricRepo, RollupRow } from '../store/index.js';

export interface RollupSample {
  cpuPercent: number;
  memUsedMiB: number;
  memTotalMiB: number;
  load1: number;
  diskUsedBytes: number;
  /** Counters since boot; the roll-up keeps deltas. */
  netRxBytes: number;
  netTxBytes: number;
}

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
  cpuSum: number;
  cpuMax: number;
  memSum: number;
  memTotal: number;
  loadSum: number;
  disk: number;
  rx: number;
  tx: number;
}

interface ObjectState {
  lastRx: number | null;
  lastTx: number | null;
  /** Indexed like the resolutions. */
  buckets: (Bucket | null)[];
}

const PRUNE_EVERY_MS = 60_000;

/** A counter delta; a counter that went down was restarted (guest reboot). */
const delta = (cur: number, last: number | null): number =>
  last === null ? 0 : cur >= last ? cur - last : cur;

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
        rows.push({
          objectId,
          stepS: res[i]!.stepS,
          t: b.t,
          samples: b.n,
          cpuAvg: b.cpuSum / b.n,
          cpuMax: b.cpuMax,
          memUsedMiB: b.memSum / b.n,
          memTotalMiB: b.memTotal,
          load1: b.loadSum / b.n,
          diskUsedBytes: b.disk,
          netRxBytes: b.rx,
          netTxBytes: b.tx,
        });
        // Written: later samples of the same bucket are merged by the store.
        o.buckets[i] = { ...b, n: 0, cpuSum: 0, cpuMax: 0, memSum: 0, loadSum: 0, rx: 0, tx: 0 };
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
        o = { lastRx: null, lastTx: null, buckets: res.map(() => null) };
        objects.set(objectId, o);
      }
      const rx = delta(s.netRxBytes, o.lastRx);
      const tx = delta(s.netTxBytes, o.lastTx);
      o.lastRx = s.netRxBytes;
      o.lastTx = s.netTxBytes;
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
          b = {
            t,
            n: 0,
            cpuSum: 0,
            cpuMax: 0,
            memSum: 0,
            memTotal: 0,
            loadSum: 0,
            disk: 0,
            rx: 0,
            tx: 0,
          };
          o.buckets[i] = b;
        }
        b.n++;
        b.cpuSum += s.cpuPercent;
        b.cpuMax = Math.max(b.cpuMax, s.cpuPercent);
        b.memSum += s.memUsedMiB;
        b.memTotal = s.memTotalMiB;
        b.loadSum += s.load1;
        b.disk = s.diskUsedBytes;
        b.rx += rx;
        b.tx += tx;
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
