import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { startHarness } from '../../support/agent-harness.js';

for (const action of ['poweroff', 'reboot'] as const) {
  test(`power ${action}: the reply goes out first, then the platform acts`, async () => {
    const h = await startHarness();
    try {
      // When the platform is asked to act, the broker has acknowledged the
      // reply (aedes sends PUBACK before fanning out, so "acknowledged" is
      // what the agent can know): nothing is pending or in flight.
      let atPower: { pending: number; inflight: number } | null = null;
      h.platform.events.on('power', () => (atPower = h.agent.outbox.stats()));
      const powered = once(h.platform.events, 'power');
      const r = await h.request('power', { id: `pw-${action}`, action });
      assert.deepEqual(r, { id: `pw-${action}`, ok: true, result: { action } });
      await powered;
      assert.deepEqual(h.platform.powerCalls, [action]);
      assert.deepEqual(
        { pending: atPower!.pending, inflight: atPower!.inflight },
        { pending: 0, inflight: 0 },
      );
    } finally {
      await h.close();
    }
  });
}

test('power still happens when the reply cannot be delivered', async () => {
  const h = await startHarness({ agent: { powerReplyWaitMs: 200 } });
  try {
    // The broker refuses the reply (so never acknowledges it) and the host
    // does not come back: the agent must power off anyway, after its wait.
    h.platform.channelAvailable = false;
    h.broker.authorizePublish = (_client, packet, cb) =>
      cb(packet.topic.endsWith('/up/reply') ? new Error('refused (test)') : null);
    const powered = once(h.platform.events, 'power');
    const t0 = Date.now();
    await h.send('power', { id: 'pw-lost', action: 'poweroff' });
    await powered;
    assert.ok(Date.now() - t0 >= 150, 'acted before its wait was over');
    assert.equal(h.all('reply').length, 0);
    assert.deepEqual(h.platform.powerCalls, ['poweroff']);
  } finally {
    await h.close();
  }
});
