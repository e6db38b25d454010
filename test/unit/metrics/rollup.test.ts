/**
 * Roll-ups with a controlled clock on a real SQLite file: bucket boundaries,
 * averages weighted by samples (also across flushes of an open bucket),
 * network counters turned into per-bucket bytes (a counter that restarts is
 * a reboot, not a negative rate), re-aggregation by step, resolution choice
 * by age, and pruning.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import { silentLogger } from '../../../host/log.js';
import { createRollups, type RollupSample } from '../../../host/metrics/rollup.js';
import { createStore } from '../../../host/store/index.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await removeDir(d);
});

async function setup(start: number) {
  const dir = await makeTempDir('mvirt-rollup-');
  dirs.push(dir);
  const store = createStore(path.join(dir, 'mvirt.db'), silentLogger());
  const clock = { now: start };
  const r = createRollups({
    repo: store.metrics,
    log: silentLogger(),
    options: {
      resolutions: [
        { stepS: 10, keepS: 3600 },
        { stepS: 60, keepS: 86_400 },
      ],
      flushIntervalMs: 3_600_000, // flushed by the test (and by every query)
    },
    now: () => clock.now,
  });
  return { store, r, clock };
}

const sample = (o: Partial<RollupSample>): RollupSample => ({
  cpuPercent: 0,
  memUsedMiB: 100,
  memTotalMiB: 1000,
  load1: 0,
  diskUsedBytes: 0,
  netRxBytes: 0,
  netTxBytes: 0,
  ...o,
});

// 12:00:00 UTC on some day: a multiple of 60 s.
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

test('10 s buckets average their samples; a bucket written in two flushes is merged, weighted', async () => {
  const { r, clock, store } = await setup(T0 + 30_000);
  r.add('vm-1', sample({ cpuPercent: 10, memUsedMiB: 100 }), T0 + 1000);
  r.add('vm-1', sample({ cpuPercent: 20, memUsedMiB: 200 }), T0 + 2000);
  r.flush(); // the bucket is still open
  r.add('vm-1', sample({ cpuPercent: 60, memUsedMiB: 300 }), T0 + 3000);
  r.add('vm-1', sample({ cpuPercent: 50 }), T0 + 12_000); // next bucket
  const q = r.query({ objectId: 'vm-1', fromMs: T0, toMs: clock.now });
  assert.equal(q.resolution, 10);
  assert.equal(q.step, 10);
  assert.deepEqual(
    q.points.map((p) => [p.t - T0, p.samples, p.cpuPercent, p.cpuMaxPercent, p.memUsedMiB]),
    [
      [0, 3, 30, 60, 200],
      [10_000, 1, 50, 50, 100],
    ],
  );
  // One row per bucket in the file, not one per flush.
  const rows = store.db
    .prepare(`SELECT count(*) AS n FROM metric_rollups WHERE object_id = 'vm-1' AND step_s = 10`)
    .get() as { n: number };
  assert.equal(rows.n, 2);
  assert.deepEqual(r.query({ objectId: 'vm-2', fromMs: T0, toMs: clock.now }).points, []);
});

test('network counters become bytes per bucket; a restarted counter counts from zero', async () => {
  const { r, clock } = await setup(T0 + 40_000);
  r.add('vm-1', sample({ netRxBytes: 1000, netTxBytes: 10 }), T0 + 1000); // baseline
  r.add('vm-1', sample({ netRxBytes: 1500, netTxBytes: 30 }), T0 + 5000);
  r.add('vm-1', sample({ netRxBytes: 2500, netTxBytes: 30 }), T0 + 15_000);
  r.add('vm-1', sample({ netRxBytes: 200, netTxBytes: 5 }), T0 + 25_000); // guest rebooted
  const q = r.query({ objectId: 'vm-1', fromMs: T0, toMs: clock.now });
  assert.deepEqual(
    q.points.map((p) => [p.netRxBytes, p.netTxBytes]),
    [
      [500, 20],
      [1000, 0],
      [200, 5],
    ],
  );
  const coarse = r.query({ objectId: 'vm-1', fromMs: T0, toMs: clock.now, stepS: 30 });
  assert.equal(coarse.step, 30);
  assert.deepEqual(
    coarse.points.map((p) => [p.t - T0, p.samples, p.netRxBytes]),
    [[0, 4, 1700]],
    'a 30 s step sums the bytes and counts every sample',
  );
});

test('older ranges read the 1 min roll-ups; steps that are not a multiple are rounded up', async () => {
  const { r, clock } = await setup(T0);
  r.add('host', sample({ cpuPercent: 10 }), T0 - 2 * 3600_000); // two hours ago
  r.add('host', sample({ cpuPercent: 30 }), T0 - 2 * 3600_000 + 20_000);
  const old = r.query({ objectId: 'host', fromMs: T0 - 3 * 3600_000, toMs: clock.now });
  assert.equal(old.resolution, 60, 'the 10 s roll-ups keep one hour only');
  assert.deepEqual(
    old.points.map((p) => [p.samples, p.cpuPercent]),
    [[2, 20]],
  );
  const recent = r.query({ objectId: 'host', fromMs: T0 - 600_000, toMs: clock.now, stepS: 90 });
  assert.equal(recent.resolution, 10, 'recent ranges keep the finer roll-ups');
  assert.equal(recent.step, 90);
  const sixty = r.query({ objectId: 'host', fromMs: T0 - 600_000, toMs: clock.now, stepS: 120 });
  assert.equal(sixty.resolution, 60, 'a step that the coarser roll-up divides reads it');
});

test('pruning drops buckets beyond each resolution’s retention', async () => {
  const { r, clock, store } = await setup(T0);
  r.add('vm-1', sample({}), T0 - 2 * 3600_000);
  r.add('vm-1', sample({}), T0 - 25 * 3600_000);
  clock.now += 61_000; // pruning runs at most once a minute
  r.flush();
  const count = (step: number): number =>
    (
      store.db.prepare(`SELECT count(*) AS n FROM metric_rollups WHERE step_s = ?`).get(step) as {
        n: number;
      }
    ).n;
  assert.deepEqual([count(10), count(60)], [0, 1], 'pruned at the next flush');
  clock.now = T0 + 23 * 3600_000;
  r.add('vm-1', sample({}), clock.now);
  r.flush();
  assert.deepEqual(
    [count(10), count(60)],
    [1, 1],
    'the new sample; the one from 2 h ago aged out of 10 s',
  );
});
