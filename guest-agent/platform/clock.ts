/**
 * Stepping the guest's wall clock to the host's time (the `sync` message).
 *
 * Node cannot call settimeofday or clock_settime, so the step is busybox
 * `date -u -s @S`, which takes whole seconds only (and busybox's date has no
 * %N to read sub-second time back). Run at a random moment it would leave the
 * clock up to a second off. So the step is timed: with the host's time known
 * (the sync's nowMs, carried forward by the monotonic clock), wait until the
 * true time reaches the next whole second minus the expected latency from
 * spawning `date` to its settimeofday, then run `date -u -s @S`, so that S is
 * set when it is true. That lands within a few tens of ms.
 *
 * The latency is not known in advance (a spawn under TCG takes tens of ms), so
 * the setter measures what it got: right after `date` exits, the wall clock
 * minus the true time is exactly how far the step missed, and that error
 * corrects the latency estimate for another round (at most MAX_ROUNDS, each
 * waiting up to a second) and for the next sync.
 */

import { CLOCK_STEP } from '../../protocol/agent.js';

/** Within this (ms) the clock is left alone, or a round counts as landed. */
export const CLOCK_TOLERANCE_MS = CLOCK_STEP.toleranceMs;
export const MAX_ROUNDS = CLOCK_STEP.rounds;
/** First guess of spawn → settimeofday, before any round measured it. */
export const INITIAL_LATENCY_MS = 10;
/** A latency estimate beyond this is a bad measurement (a stalled round), not a spawn. */
export const MAX_LATENCY_MS = CLOCK_STEP.maxLatencyMs;

export interface ClockPlan {
  /** Host minus guest (ms): how far the clock is to be stepped. */
  offsetMs: number;
  /** The whole second (since the epoch) `date -s @` sets. */
  seconds: number;
  /** Wait this long (ms) before spawning `date`. */
  waitMs: number;
}

/**
 * Pure arithmetic: the next whole second that can still be reached after the
 * spawn latency, and how long to wait so that `date` sets it as it becomes true.
 */
export function planClockStep(p: {
  hostNowMs: number;
  guestNowMs: number;
  latencyMs: number;
}): ClockPlan {
  const latency = Math.min(Math.max(p.latencyMs, 0), MAX_LATENCY_MS);
  const seconds = Math.ceil((p.hostNowMs + latency) / 1000);
  return {
    offsetMs: p.hostNowMs - p.guestNowMs,
    seconds,
    waitMs: Math.max(0, seconds * 1000 - latency - p.hostNowMs),
  };
}

export interface ClockDeps {
  /** The wall clock (ms since the epoch). */
  wallMs(): number;
  /** A monotonic clock (ms), unaffected by steps. */
  monoMs(): number;
  wait(ms: number): Promise<void>;
  /** Set the wall clock to this whole second (`date -u -s @S`); rejects with why it failed. */
  setSeconds(seconds: number): Promise<void>;
}

export interface ClockSetter {
  /** Step to `nowMs` (true as of the call); resolves with the error left (wall − true, ms). */
  set(nowMs: number): Promise<number>;
  /** The current latency estimate (ms). */
  readonly latencyMs: number;
}

export function createClockSetter(deps: ClockDeps): ClockSetter {
  let latencyMs = INITIAL_LATENCY_MS;
  return {
    async set(nowMs) {
      const m0 = deps.monoMs();
      const trueNow = () => nowMs + (deps.monoMs() - m0);
      let error = deps.wallMs() - trueNow();
      for (let round = 0; round < MAX_ROUNDS && Math.abs(error) > CLOCK_TOLERANCE_MS; round++) {
        const plan = planClockStep({ hostNowMs: trueNow(), guestNowMs: deps.wallMs(), latencyMs });
        await deps.wait(plan.waitMs);
        await deps.setSeconds(plan.seconds);
        error = deps.wallMs() - trueNow();
        // Set late (error < 0): the spawn took longer than thought.
        latencyMs = Math.min(Math.max(latencyMs - error, 0), MAX_LATENCY_MS);
      }
      return error;
    },
    get latencyMs() {
      return latencyMs;
    },
  };
}
