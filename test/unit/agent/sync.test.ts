import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AGENT_ERROR, SyncResult } from '../../../protocol/agent.js';
import { startHarness } from '../../support/agent-harness.js';

const HOUR = 3_600_000;

test('sync steps the clock by the host’s stepMs and mixes the entropy into the pool', async () => {
  const h = await startHarness();
  try {
    // The guest's clock stands still where its snapshot was taken, an hour ago.
    const guestMs = 1_700_000_000_000;
    h.platform.wallMs = guestMs;
    const nowMs = guestMs + HOUR;
    const entropy = Buffer.alloc(32, 0xa5);
    const r = await h.request('sync', { id: 's1', stepMs: HOUR, entropy });
    assert.equal(r.ok, true, JSON.stringify(r.error));
    assert.deepEqual(SyncResult.parse(r.result), {
      clockStepMs: HOUR,
      entropyBytes: 32,
      network: 'none',
    });
    // Stepped by the hour from where its clock stood, carried forward by what the agent spent before the step.
    assert.equal(h.platform.clockSets.length, 1);
    const set = h.platform.clockSets[0]!;
    assert.ok(set >= nowMs && set < nowMs + 1000, `set to ${set - nowMs} ms after nowMs`);
    assert.deepEqual(h.platform.entropy, [entropy]);

    // A guest ahead of the host is stepped back.
    const back = await h.request('sync', {
      id: 's2',
      stepMs: -2000,
      entropy: Buffer.alloc(16, 1),
    });
    assert.equal((back.result as SyncResult).clockStepMs, -2000);
    const second = h.platform.clockSets[1]!;
    assert.ok(
      second >= set - 2000 && second < set - 1000,
      `set to ${second - set} ms from the first`,
    );
  } finally {
    await h.close();
  }
});

test('a sync that cannot set the clock replies an error that says so', async () => {
  const h = await startHarness();
  try {
    h.platform.failures.clock =
      "date -u -s @1700003600: date: can't set date: Operation not permitted";
    const r = await h.request('sync', {
      id: 's3',
      stepMs: 3_600_000,
      entropy: Buffer.alloc(16, 2),
    });
    assert.equal(r.ok, false);
    assert.equal(r.error?.code, AGENT_ERROR.INTERNAL);
    assert.match(r.error!.message, /^sync: cannot set the clock: date -u -s @\d+: .*not permitted/);

    h.platform.failures = { entropy: 'EACCES: permission denied, open /dev/urandom' };
    const e = await h.request('sync', { id: 's4', stepMs: 1, entropy: Buffer.alloc(16) });
    assert.equal(e.ok, false);
    assert.match(e.error!.message, /^sync: cannot mix entropy into the kernel pool: EACCES/);
    // Entropy goes first: a failure there leaves the clock alone.
    assert.deepEqual(h.platform.clockSets, []);

    // Too little entropy is refused by the schema, before anything is touched.
    const bad = await h.request('sync', { id: 's5', stepMs: 1, entropy: Buffer.alloc(8) });
    assert.equal(bad.error?.code, AGENT_ERROR.BAD_MESSAGE);
  } finally {
    await h.close();
  }
});
