import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AGENT_PROTOCOL_VERSION } from '../../../protocol/agent.js';
import { AGENT_VERSION } from '../../../guest-agent/version.js';
import { startHarness, ROOT, VM } from '../../support/agent-harness.js';

test('on connect the agent subscribes, says hello with the boot timeline, then ready', async () => {
  const h = await startHarness();
  try {
    const kinds = h.received.map((r) => r.kind);
    assert.deepEqual(kinds.slice(0, 2), ['hello', 'ready']);
    assert.equal(h.received[0]?.topic, `${ROOT}/agent/${VM}/up/hello`);
    assert.equal(
      h.received.find((r) => r.invalid),
      undefined,
    );
    const hello = await h.waitFor('hello');
    assert.equal(hello.protocol, AGENT_PROTOCOL_VERSION);
    assert.equal(hello.agentVersion, AGENT_VERSION);
    assert.equal(hello.kernel, '6.1.0-test');
    assert.equal(hello.hostname, 'guest');
    assert.equal(hello.pid, process.pid);
    // init wrote 1.25 to /run/mvirt/init-uptime, the process started at 2.5 s,
    // and /proc/uptime said 12.5 s when CONNACK arrived.
    assert.deepEqual(hello.boot, { initS: 1.25, agentStartS: 2.5, connectedS: 12.5 });
    assert.deepEqual(hello.jobs, []);
    assert.deepEqual(h.clientIds, [`agent-${VM}`]);
    assert.ok(h.agent.connected);
    // It answers on its down topics once ready.
    // A ping gives its data back, with the guest's wall clock for the host's reading of it.
    h.platform.wallMs = 1_700_000_000_123;
    const r = await h.request('ping', { id: 'p1', data: Buffer.from('abc') });
    assert.deepEqual(r, {
      id: 'p1',
      ok: true,
      result: { data: Buffer.from('abc'), wallMs: 1_700_000_000_123 },
    });
  } finally {
    await h.close();
  }
});

test('a missing init-uptime file gives initS 0 rather than no hello', async () => {
  const h = await startHarness({ start: false });
  try {
    h.platform.files.delete('/run/mvirt/init-uptime');
    await h.agent.start();
    const hello = await h.waitFor('hello');
    assert.equal(hello.boot.initS, 0);
  } finally {
    await h.close();
  }
});
