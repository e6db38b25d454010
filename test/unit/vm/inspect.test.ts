/**
 * vm.blockDevices on the host side: a guest's answer is checked against its
 * schema before anyone sees it, and a VM without a connected agent is told so.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmContext } from '../../../host/vm/context.js';
import { inspectPart } from '../../../host/vm/inspect.js';
import { MvirtError } from '../../../protocol/errors.js';

function ctxWith(answer: unknown, connected = true): VmContext {
  return {
    find: () => ({ id: 'vm-000000000001', name: 'web', state: 'ready' }),
    agents: { connected: () => connected, call: () => Promise.resolve(answer) },
    options: { agentCallTimeoutMs: 1000 },
    now: () => '2026-12-07T00:00:00.000Z',
  } as unknown as VmContext;
}

const codeOf = async (p: Promise<unknown>): Promise<string> =>
  p.then(
    () => 'ok',
    (e: unknown) => (e instanceof MvirtError ? e.code : String(e)),
  );

test('a valid answer is passed on with the VM id and the time', async () => {
  const devices = [{ name: 'vdb', sizeBytes: 512, readOnly: false, serial: 'vol-0123456789ab' }];
  const r = await inspectPart(ctxWith({ blockDevices: devices })).blockDevices('web');
  assert.deepEqual(r, {
    vm: 'vm-000000000001',
    at: '2026-12-07T00:00:00.000Z',
    blockDevices: devices,
  });
});

test('a hostile answer is AGENT_ERROR, never passed on', async () => {
  for (const bad of [
    null,
    'devices',
    { blockDevices: [{ name: 'vdb', sizeBytes: -1, readOnly: false }] },
    { blockDevices: [{ name: 'x'.repeat(33), sizeBytes: 1, readOnly: false }] },
    { blockDevices: [], extra: true },
    {
      blockDevices: Array.from({ length: 33 }, () => ({ name: 'a', sizeBytes: 1, readOnly: true })),
    },
  ])
    assert.equal(
      await codeOf(inspectPart(ctxWith(bad)).blockDevices('web')),
      'AGENT_ERROR',
      JSON.stringify(bad)?.slice(0, 80),
    );
});

test('no connected agent: AGENT_UNAVAILABLE, the agent not asked', async () => {
  assert.equal(
    await codeOf(inspectPart(ctxWith({}, false)).blockDevices('web')),
    'AGENT_UNAVAILABLE',
  );
});
