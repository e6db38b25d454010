/**
 * Reading a guest's wall clock from the host, the way NTP reads a server:
 * a ping whose reply carries the guest's time (protocol/agent.ts PingResult).
 * The reading was taken somewhere within the round trip, so the offset is
 * known to ± half of it; of a few pings the one with the shortest round trip
 * is kept (NTP's clock filter keeps the minimum-delay sample for the same
 * reason: queueing only ever adds delay, and adds it unevenly).
 *
 * Under TCG a restored guest answers a ping in 6–50 ms when quiet and in
 * hundreds of ms under load (CI, 2 forks beside other tests), so a single
 * sample could be off by more than the step's own tolerance; PROBES of them
 * nearly always include a quick one.
 */
import { PingResult } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import { formatIssues } from '../../protocol/validate.js';

/** Pings per reading; stop early once one comes back within GOOD_RTT_MS. */
export const PROBES = 5;
export const GOOD_RTT_MS = 20;

export interface ClockReading {
  /** Host minus guest (ms): how far the guest's clock is behind. */
  offsetMs: number;
  /** The offset is right to within ± this (half the kept round trip, ms). */
  boundMs: number;
}

export interface ClockProbeDeps {
  /** One ping to the agent; resolves with its reply's result (validated here). */
  ping(): Promise<unknown>;
  /** The host's wall clock (ms since the epoch). */
  wallMs(): number;
  /** A monotonic clock (ms) for the round trip. */
  monoMs(): number;
}

/** Read the guest's clock; rejects with the ping's error if none answers, or AGENT_ERROR on a bad reply. */
export async function readGuestClock(deps: ClockProbeDeps, probes = PROBES): Promise<ClockReading> {
  let best: ClockReading | undefined;
  for (let i = 0; i < probes; i++) {
    const sentWall = deps.wallMs();
    const sent = deps.monoMs();
    const r = PingResult.safeParse(await deps.ping());
    if (!r.success)
      throw new MvirtError(
        'AGENT_ERROR',
        `the agent's ping reply has no clock: ${formatIssues(r.error)}`,
      );
    const reply = r.data;
    const rtt = deps.monoMs() - sent;
    const reading = { offsetMs: sentWall + rtt / 2 - reply.wallMs, boundMs: rtt / 2 };
    if (!best || reading.boundMs < best.boundMs) best = reading;
    if (rtt <= GOOD_RTT_MS) break;
  }
  return best!;
}
