/**
 * host/vm/clock-probe.ts against a guest clock the test plays, with round
 * trips it chooses: the reading is the offset to within half the kept round
 * trip, the quickest of the pings is kept, and a bad reply is refused.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GOOD_RTT_MS, PROBES, readGuestClock } from '../../../host/vm/clock-probe.js';
import type { MvirtError } from '../../../protocol/errors.js';

/**
 * A guest `aheadMs` ahead of the host whose pings take the given round trips,
 * each split unevenly (the reply's clock is read `atFraction` of the way).
 */
function guest(aheadMs: number, rtts: number[], atFraction = 0.8) {
  let host = 1_800_000_000_000;
  let mono = 0;
  const sent: number[] = [];
  return {
    sent,
    deps: {
      wallMs: () => host,
      monoMs: () => mono,
      ping: () => {
        const rtt = rtts[sent.length] ?? 1;
        sent.push(rtt);
        const wallMs = host + rtt * atFraction + aheadMs;
        host += rtt;
        mono += rtt;
        return Promise.resolve({ wallMs });
      },
    },
  };
}

test('a reading is the offset to within half the round trip, of the quickest ping', async () => {
  const g = guest(-250, [400, 120, 60, 300, 90]);
  const r = await readGuestClock(g.deps);
  assert.equal(g.sent.length, PROBES);
  assert.equal(r.boundMs, 30, 'the 60 ms round trip is kept');
  // Read at 80% of a 60 ms trip: the midpoint guess is 18 ms out, within its ±30.
  assert.ok(Math.abs(r.offsetMs - 250) <= r.boundMs, `offset ${r.offsetMs}`);
  assert.equal(r.offsetMs, 250 - 18);
});

test('a quick round trip ends the reading early', async () => {
  const g = guest(5000, [300, GOOD_RTT_MS - 5, 1]);
  const r = await readGuestClock(g.deps);
  assert.equal(g.sent.length, 2);
  assert.ok(Math.abs(r.offsetMs + 5000) <= r.boundMs);
});

test('a reply without a clock (or with more) is refused, not read as a time', async () => {
  for (const reply of [
    {},
    { wallMs: 'soon' },
    { wallMs: Infinity },
    { wallMs: 1e300 },
    { wallMs: -1 },
    { wallMs: 1, x: 1 },
    null,
  ]) {
    await assert.rejects(
      readGuestClock({ wallMs: Date.now, monoMs: () => 0, ping: () => Promise.resolve(reply) }),
      (err: MvirtError) =>
        err.code === 'AGENT_ERROR' && /ping reply has no clock/.test(err.message),
      JSON.stringify(reply),
    );
  }
});
