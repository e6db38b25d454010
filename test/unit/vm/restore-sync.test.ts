/**
 * The host's side of a restored guest's first hello (host/vm/restore.ts),
 * with the agent played by the test: a guest that answers the clock and
 * entropy `sync` with something that is not a SyncResult, or says its NIC
 * re-addressing failed, does not get its fork's link up, and the restore is
 * still recorded, as a warning; an honest one gets its link up and an info.
 * The guest's clock is played too: the host reads it with pings, steps it by
 * what it read, and steps once more when a step missed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Hello } from '../../../protocol/agent.js';
import type { RestoreInfo } from '../../../protocol/rpc.js';
import type { VmContext } from '../../../host/vm/context.js';
import type { Live } from '../../../host/vm/live.js';
import { restorePart } from '../../../host/vm/restore.js';

const HOUR = 3_600_000;

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

/** The guest's clock as the test plays it: its offset from the host's, and how each step lands. */
interface GuestClock {
  /** Guest minus host (ms). */
  aheadMs: number;
  /** What each sync's step misses by (ms; later steps land exactly). */
  misses?: number[];
  /** The ping reply, if not an honest one. */
  ping?: unknown;
}

/**
 * A restored fork whose agent answers `sync` with `reply` and pings with its
 * clock; what the host did, and the steps it asked for.
 */
async function restoreWith(reply: unknown, clock: GuestClock = { aheadMs: -HOUR }) {
  const links: boolean[] = [];
  const events: Array<{ level: string; message: string }> = [];
  const steps: number[] = [];
  let saved: RestoreInfo | undefined;
  const agent = (_vm: string, kind: string, body: { stepMs?: number }) => {
    if (kind === 'ping') return clock.ping ?? { wallMs: Date.now() + clock.aheadMs };
    assert.equal(kind, 'sync');
    steps.push(body.stepMs!);
    clock.aheadMs += body.stepMs! + (clock.misses?.shift() ?? 0);
    return reply;
  };
  const ctx = {
    agents: { call: (...a: Parameters<typeof agent>) => Promise.resolve(agent(...a)) },
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
  return { links, events, saved, steps, linkDown: live.restoring!.linkDown };
}

test('an honest sync: the fork’s link goes up, the restore is an info with its figures', async () => {
  const r = await restoreWith({ clockStepMs: HOUR, entropyBytes: 64, network: 'applied' });
  assert.deepEqual(r.links, [true]);
  assert.equal(r.linkDown, false);
  assert.equal(r.events[0]?.level, 'info');
  // The step is what the host read: the guest an hour behind (± the reading's bound).
  assert.equal(r.steps.length, 1);
  assert.ok(Math.abs(r.steps[0]! - HOUR) <= 5, `stepped ${r.steps[0]}`);
  assert.equal(r.saved?.clockStepMs, r.steps[0]);
  assert.ok(Math.abs(r.saved!.clockErrorMs!) <= 5 + r.saved!.clockErrorBoundMs!);
  assert.equal(r.saved?.network, 'applied');
  assert.equal(r.saved?.previousVm, 'vm-source');
  assert.match(r.events[0]!.message, /clock stepped 36000\d\d ms, now -?\d ± \d+ ms off/);
});

test('a step that missed (a stalled round under load) is read and stepped once more', async () => {
  const reply = { clockStepMs: 0, entropyBytes: 64, network: 'applied' };
  const r = await restoreWith(reply, { aheadMs: -HOUR, misses: [-468] });
  assert.equal(r.steps.length, 2);
  assert.ok(Math.abs(r.steps[1]! - 468) <= 5, `second step ${r.steps[1]}`);
  assert.ok(Math.abs(r.saved!.clockErrorMs!) <= 5 + r.saved!.clockErrorBoundMs!);
  // The host's entropy of both syncs and the identity's.
  assert.equal(r.saved?.entropyBytes, 64 * 3);
  assert.equal(r.events[0]?.level, 'info');

  // A guest that keeps missing is stepped twice, no more, and what is left is recorded.
  const stuck = await restoreWith(reply, { aheadMs: -HOUR, misses: [-468, -468] });
  assert.equal(stuck.steps.length, 2);
  assert.ok(Math.abs(stuck.saved!.clockErrorMs! + 468) <= 5 + stuck.saved!.clockErrorBoundMs!);
  assert.match(stuck.events[0]!.message, /now -4\d\d ± \d+ ms off/);
});

test('a guest whose ping reply carries no clock is not stepped: a warning, no link', async () => {
  for (const ping of [{}, { wallMs: 'now' }, { wallMs: 1, extra: true }]) {
    const r = await restoreWith(
      { clockStepMs: 0, entropyBytes: 64, network: 'applied' },
      { aheadMs: -HOUR, ping },
    );
    assert.deepEqual(r.steps, [], JSON.stringify(ping));
    assert.deepEqual(r.links, []);
    assert.equal(r.events[0]?.level, 'warn');
    assert.match(r.events[0]!.message, /not synced: the agent's ping reply has no clock: /);
  }
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
