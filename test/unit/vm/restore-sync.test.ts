/**
 * The host's side of a restored guest's first hello (host/vm/restore.ts),
 * with the agent played by the test: a guest that answers the clock and
 * entropy `sync` with something that is not a SyncResult, or says its NIC
 * re-addressing failed, does not get its fork's link up, and the restore is
 * still recorded, as a warning; an honest one gets its link up and an info.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Hello } from '../../../protocol/agent.js';
import type { RestoreInfo } from '../../../protocol/rpc.js';
import type { VmContext } from '../../../host/vm/context.js';
import type { Live } from '../../../host/vm/live.js';
import { restorePart } from '../../../host/vm/restore.js';

const HELLO: Hello = {
  protocol: 1,
  agentVersion: '0.1.0',
  kernel: '6.1.0',
  hostname: 'fork-1',
  pid: 1,
  boot: { initS: 1, agentStartS: 2, connectedS: 3 },
  jobs: [],
  generation: 1,
  restored: {
    fromGeneration: 0,
    generation: 1,
    previous: { vmId: 'vm-source', hostname: 'src' },
    entropyBytes: 64,
    network: 'pending',
    jobsDropped: 0,
  },
};

/** A restored fork whose agent answers `sync` with `reply`; what the host did. */
async function restoreWith(reply: unknown) {
  const links: boolean[] = [];
  const events: Array<{ level: string; message: string }> = [];
  let saved: RestoreInfo | undefined;
  const ctx = {
    agents: { call: () => Promise.resolve(reply) },
    options: { agentCallTimeoutMs: 1000 },
    vms: {
      setRestoreInfo: (_id: string, info: RestoreInfo) => (saved = { ...info }),
      get: (id: string) => ({ id, name: 'fork-1' }),
    },
    publishState: () => undefined,
    now: () => new Date().toISOString(),
    events: {
      append: (e: { level: string; message: string }) => events.push(e),
      publishVmEvent: () => undefined,
    },
  } as unknown as VmContext;
  const live = {
    id: 'vm-fork',
    log: { warn: () => undefined },
    running: { setLink: (up: boolean) => Promise.resolve(void links.push(up)) },
    restoring: {
      info: { snapshot: 'snap-0123456789ab', generation: 1, spawnToRunningMs: 100 },
      linkDown: true,
    },
  } as unknown as Live;
  restorePart(ctx).onRestoredHello(live, HELLO);
  await live.restoring!.synced;
  return { links, events, saved, linkDown: live.restoring!.linkDown };
}

test('an honest sync: the fork’s link goes up, the restore is an info with its figures', async () => {
  const r = await restoreWith({ clockStepMs: 1500, entropyBytes: 64, network: 'applied' });
  assert.deepEqual(r.links, [true]);
  assert.equal(r.linkDown, false);
  assert.equal(r.events[0]?.level, 'info');
  assert.equal(r.saved?.clockStepMs, 1500);
  assert.equal(r.saved?.network, 'applied');
  assert.equal(r.saved?.previousVm, 'vm-source');
});

test('a hostile or broken sync reply: no link, the restore recorded as a warning', async () => {
  for (const reply of [
    { clockStepMs: 'soon', entropyBytes: 64, network: 'applied' },
    { clockStepMs: 1, entropyBytes: 64, network: 'applied', extra: 'smuggled' },
    'applied',
    null,
  ]) {
    const r = await restoreWith(reply);
    assert.deepEqual(r.links, [], JSON.stringify(reply));
    assert.equal(r.linkDown, true);
    assert.equal(r.events[0]?.level, 'warn');
    assert.match(r.events[0]!.message, /not synced/);
    assert.equal(r.saved?.clockStepMs, undefined);
  }
});

test('a guest that says its NIC change failed keeps its link down', async () => {
  const r = await restoreWith({ clockStepMs: 5, entropyBytes: 64, network: 'failed' });
  assert.deepEqual(r.links, []);
  assert.equal(r.events[0]?.level, 'warn');
  assert.match(r.events[0]!.message, /link stays down/);
});
