/**
 * A host's side of fleet placement on its own (host/fleet/taker.ts), with an
 * in-memory bus and a host of given room: what it claims, when, and what it
 * holds. The whole protocol over real brokers is placement.test.ts.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { MessageHandler } from '../../../host/broker/types.js';
import { createFleetTaker, SPREAD_MS } from '../../../host/fleet/taker.js';
import { silentLogger } from '../../../host/log.js';
import type { FleetClaim, FleetRequest } from '../../../protocol/fleet.js';

const LIMITS = { vcpus: 4, memoryMiB: 1024, maxVms: 4 };
// The taker's timers are unref'd (they never keep mvirtd alive): this keeps the test's loop up.
const alive = setInterval(() => undefined, 1000);
after(() => clearInterval(alive));

function host(o: { labels?: Record<string, string>; usedVms?: number; images?: string[] } = {}) {
  const claims: FleetClaim[] = [];
  const waiters: (() => void)[] = [];
  let handler: MessageHandler | undefined;
  const used = o.usedVms ?? 0;
  const taker = createFleetTaker({
    bus: {
      publish: async (_topic, payload) => {
        claims.push(JSON.parse(payload.toString()) as FleetClaim);
        for (const w of waiters.splice(0)) w();
      },
      subscribe: async (_filter, h) => {
        handler = h;
        return async () => undefined;
      },
    },
    prefix: 'mvirt',
    hostId: 'h1',
    labels: o.labels ?? {},
    limits: LIMITS,
    vms: {
      defaults: { vcpus: 1, memoryMiB: 256, image: 'default', backend: 'qemu' },
      allocated: () => ({ vms: used, vcpus: used, memoryMiB: used * 256 }),
      // Admission as mvirtd's: the VM count, vCPUs and memory within the limits.
      canAdmit: (size, r = { vms: 0, vcpus: 0, memoryMiB: 0 }) =>
        used + r.vms + 1 <= LIMITS.maxVms &&
        used + r.vcpus + size.vcpus <= LIMITS.vcpus &&
        used * 256 + r.memoryMiB + size.memoryMiB <= LIMITS.memoryMiB,
      onStateChange: () => () => undefined,
    },
    images: { listCached: () => o.images ?? ['default'] },
    pools: {
      exists: () => false,
      get: () => {
        throw new Error('no pools here');
      },
    },
    jobs: { countByState: () => ({}), onStateChange: () => () => undefined },
    log: silentLogger(),
  });
  const queue = (id: string, extra: Partial<FleetRequest> = {}, params: object = {}): void => {
    const req = {
      id,
      method: 'job.run',
      params: { argv: ['true'], ...params },
      claimTo: 'mvirt/_clients/c1/replies/fleet/claim',
      at: new Date().toISOString(),
      expiresAt: new Date(Date.now() + 60_000).toISOString(),
      ...extra,
    };
    handler!(`mvirt/_fleet/queue/c1/${id}`, Buffer.from(JSON.stringify(req)), {} as never);
  };
  const remove = (id: string): void =>
    handler!(`mvirt/_fleet/queue/c1/${id}`, Buffer.alloc(0), {} as never);
  const claimsOf = (n: number): Promise<FleetClaim[]> =>
    claims.length >= n
      ? Promise.resolve(claims.slice(0, n))
      : new Promise((resolve) => waiters.push(() => void claimsOf(n).then(resolve)));
  /** Let pending evaluations and claim timers run. */
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, SPREAD_MS + 20));
  return { taker, queue, remove, claims, claimsOf, settle };
}

test('an emptier host claims first; a fuller host later (the spread)', async () => {
  // Both hosts see the request at the same moment: the order of their claims
  // is the test, not wall times of separate runs (a loaded machine stretches those).
  const empty = host();
  const full = host({ usedVms: 3 });
  await empty.taker.start();
  await full.taker.start();
  const order: string[] = [];
  const t0 = performance.now();
  let slow = 0;
  empty.queue('f-1');
  full.queue('f-1');
  await Promise.all([
    empty.claimsOf(1).then(() => order.push('empty')),
    full.claimsOf(1).then(() => {
      slow = performance.now() - t0;
      order.push('full');
    }),
  ]);
  assert.deepEqual(order, ['empty', 'full']);
  // 3 of 4 VMs used, plus this one: 30 ms × 1.
  assert.ok(slow >= SPREAD_MS - 2, `a full host claimed after ${slow} ms`);
  await empty.taker.close();
  await full.taker.close();
});

test('room is held per claim: a host with room for one claims one, and the next once the first leaves the queue', async () => {
  const h = host({ usedVms: 3 });
  await h.taker.start();
  h.queue('f-1');
  h.queue('f-2');
  await h.claimsOf(1);
  await h.settle();
  assert.deepEqual(
    h.claims.map((c) => c.request),
    ['f-1'],
  );
  h.remove('f-1'); // placed elsewhere (or here: then allocated() counts it)
  assert.equal((await h.claimsOf(2))[1]!.request, 'f-2');
  await h.taker.close();
});

test('no claim without every label, the host asked for, the image, room, or when excluded or expired', async () => {
  const h = host({ labels: { gpu: 'false' } });
  await h.taker.start();
  h.queue('labels', { need: { labels: { gpu: 'true' } } });
  h.queue('host', { need: { host: 'h2' } });
  h.queue('image', {}, { image: 'other' });
  h.queue('big', {}, { vcpus: 8 });
  h.queue('excluded', { exclude: ['h1'] });
  h.queue('expired', { expiresAt: new Date(Date.now() - 1).toISOString() });
  h.queue('vm', {}, { vm: 'web' }); // a VM names one host: only with need.host
  h.queue('not-its-own', { claimTo: 'mvirt/_clients/other/replies/x' });
  h.queue('mine', { need: { host: 'h1', labels: { gpu: 'false' } } });
  await h.claimsOf(1);
  await h.settle();
  assert.deepEqual(
    h.claims.map((c) => [c.request, c.hostId]),
    [['mine', 'h1']],
  );
  await h.taker.close();
});
