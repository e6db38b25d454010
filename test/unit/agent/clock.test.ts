import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  CLOCK_TOLERANCE_MS,
  createClockSetter,
  INITIAL_LATENCY_MS,
  MAX_LATENCY_MS,
  MAX_ROUNDS,
  planClockStep,
  type ClockDeps,
} from '../../../guest-agent/platform/clock.js';

test('clock plan: the next whole second reachable after the spawn latency, and the wait to it', () => {
  // Host time 1_000_000.5 s, guest an hour behind, `date` needs 10 ms to set the clock.
  const p = planClockStep({
    hostNowMs: 1_000_000_500,
    guestNowMs: 996_400_500,
    latencyMs: 10,
  });
  assert.deepEqual(p, { offsetMs: 3_600_000, seconds: 1_000_001, waitMs: 490 });
  // Spawned 490 ms later, date sets second 1_000_001 10 ms after that: exactly when it is true.
  assert.equal(1_000_000_500 + p.waitMs + 10, p.seconds * 1000);

  // 5 ms before a second and 10 ms of latency: that second cannot be reached, the next one can.
  assert.deepEqual(planClockStep({ hostNowMs: 999_995, guestNowMs: 999_995, latencyMs: 10 }), {
    offsetMs: 0,
    seconds: 1001,
    waitMs: 995,
  });
  // On the dot after the latency: no wait at all.
  assert.deepEqual(planClockStep({ hostNowMs: 4_990, guestNowMs: 5_000, latencyMs: 10 }), {
    offsetMs: -10,
    seconds: 5,
    waitMs: 0,
  });
  // Guest ahead of the host: the step is negative, the plan the same arithmetic.
  assert.equal(
    planClockStep({ hostNowMs: 1_000, guestNowMs: 61_000, latencyMs: 0 }).offsetMs,
    -60_000,
  );
  // Nonsense latency estimates are clamped.
  assert.equal(planClockStep({ hostNowMs: 100, guestNowMs: 0, latencyMs: -50 }).waitMs, 900);
  assert.equal(
    planClockStep({ hostNowMs: 0, guestNowMs: 0, latencyMs: 10_000 }).waitMs,
    1000 - MAX_LATENCY_MS,
  );
});

/**
 * A simulated guest: a monotonic clock the setter's waits advance (plus a
 * timer's lateness), a wall clock `skewMs` off the true time, and a `date`
 * whose settimeofday happens `spawnMs` after it is spawned.
 */
function simulatedGuest(o: { skewMs: number; spawnMs: number; lateMs?: number[] }) {
  const TRUE_START = 1_700_000_000_123;
  const g = { mono: 0, skewMs: o.skewMs, set: [] as number[] };
  const trueNow = () => TRUE_START + g.mono;
  const deps: ClockDeps = {
    wallMs: () => trueNow() + g.skewMs,
    monoMs: () => g.mono,
    wait: async (ms) => void (g.mono += ms + (o.lateMs?.shift() ?? 0)),
    setSeconds: async (s) => {
      g.mono += o.spawnMs;
      g.set.push(s);
      g.skewMs = s * 1000 - trueNow();
      g.mono += 3; // date exits, the agent hears of it
    },
  };
  return { g, deps, trueNow };
}

test('clock setter: a step lands within the tolerance, learning the spawn latency it got', async () => {
  const { g, deps, trueNow } = simulatedGuest({ skewMs: -3_600_000, spawnMs: 45 });
  const clock = createClockSetter(deps);
  const error = await clock.set(trueNow());
  // Round 1 guessed 10 ms and landed 35 ms late; round 2 used 45 ms and landed on time.
  assert.equal(g.set.length, 2);
  assert.ok(Math.abs(error) <= CLOCK_TOLERANCE_MS, `error ${error}`);
  assert.equal(Math.round(deps.wallMs() - trueNow()), Math.round(error));
  assert.equal(clock.latencyMs, 45);

  // The next sync starts from what was learnt: one round.
  g.skewMs = 90_000;
  const again = await clock.set(trueNow());
  assert.equal(g.set.length, 3);
  assert.ok(Math.abs(again) <= CLOCK_TOLERANCE_MS);
});

test('clock setter: a clock already within the tolerance is left alone', async () => {
  const { g, deps, trueNow } = simulatedGuest({ skewMs: 12, spawnMs: 45 });
  const error = await createClockSetter(deps).set(trueNow());
  assert.deepEqual(g.set, []);
  assert.equal(error, 12);
});

test('clock setter: at most MAX_ROUNDS steps, then the error left is reported', async () => {
  // Timers fire 300 ms late, then on time, then late again: each round learns
  // the wrong lesson from the one before, and the setter gives up after three.
  const { g, deps, trueNow } = simulatedGuest({
    skewMs: 5_000,
    spawnMs: 20,
    lateMs: [300, 0, 300],
  });
  const clock = createClockSetter(deps);
  assert.equal(clock.latencyMs, INITIAL_LATENCY_MS);
  const error = await clock.set(trueNow());
  assert.equal(g.set.length, MAX_ROUNDS);
  assert.ok(error < -CLOCK_TOLERANCE_MS, `error ${error}`);
  assert.ok(clock.latencyMs <= MAX_LATENCY_MS);
});

test('clock setter: a failing date rejects with its reason', async () => {
  const { deps, trueNow } = simulatedGuest({ skewMs: 5_000, spawnMs: 20 });
  deps.setSeconds = async () => {
    throw new Error("date -u -s @1: date: can't set date: Operation not permitted");
  };
  await assert.rejects(createClockSetter(deps).set(trueNow()), /Operation not permitted/);
});
