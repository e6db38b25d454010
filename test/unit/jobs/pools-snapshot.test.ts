/**
 * Fast pools on a backend that can save state (the fake's snapshots
 * capability: a small state file; a resume is a new boot of the real agent
 * core): `snapshot: true` pools boot one VM, keep it as the template of their
 * image and size, and fork it for every other member; `fromSnapshot` pools
 * fork that snapshot, which cannot be deleted meanwhile; a pool whose snapshot
 * is gone makes nothing and says why; a template whose forks cannot start is
 * replaced.
 */
import assert from 'node:assert/strict';
import { open as openFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { DryRunPlan, PoolRecord, SnapshotRecord, VmRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

let j: JobDaemon;
before(async () => {
  j = await startJobDaemon({
    hv: createFakeHypervisor({ agent: 'real', capabilities: { snapshots: true } }),
  });
});
after(cleanupAll);

/** Every VM that was ever a member of pool `name`, as last published while it existed. */
function everMembers(name: string): VmRecord[] {
  const last = new Map<string, VmRecord>();
  for (const v of j.rec.allVmStates()) if (v.metadata['mvirt.pool'] === name) last.set(v.id, v);
  return [...last.values()];
}

const readyMembers = (name: string): VmRecord[] =>
  j.rec.liveVms().filter((v) => v.metadata['mvirt.pool'] === name && v.state === 'ready');

/** Wait until the pool's retained record says `n` VMs are ready, none busy or starting. */
const poolReady = (name: string, n: number): Promise<PoolRecord> =>
  j.rec.until(() => {
    const p = j.rec.poolStates(name).at(-1);
    return p && p.vms.ready === n && p.vms.busy + p.vms.starting === 0 ? p : undefined;
  }, `pool ${name}: ${n} ready`);

/** pool.set's dry run. */
const planSet = async (p: { name: string; min: number; [k: string]: unknown }) =>
  result(await j.c.call('pool.set', { ...p, dryRun: true })) as unknown as DryRunPlan;

const warnings = async (pool: string) =>
  result(await j.c.call('events.query', { objectId: `pool:${pool}`, limit: 100 })).events.filter(
    (e) => e.level === 'warn',
  );

const templates = async (): Promise<SnapshotRecord[]> =>
  result(await j.c.call('snapshot.list', {})).snapshots.filter((s) =>
    s.name.startsWith('mvirt-template-'),
  );

test('snapshot: true — the first VM boots and becomes the template, the others fork it', async () => {
  const plan = await planSet({ name: 'fast', min: 3, max: 4, snapshot: true });
  assert.match(
    plan.changes[0]!,
    /^pool fast: created \(min 3, max 4; VMs are forks of template mvirt-template-default-1x256-\w+, taken of the first\) — 3 VMs would be made$/,
  );
  assert.ok(
    plan.steps.some((s) => /, the first booted and, once ready, kept as the template/.test(s)),
    plan.steps.join('\n'),
  );

  const set = result(await j.c.call('pool.set', { name: 'fast', min: 3, max: 4, snapshot: true }));
  assert.equal(set.snapshot, true);
  assert.equal(set.fromSnapshot, undefined);
  await poolReady('fast', 3);

  const [tmpl, ...more] = await templates();
  assert.equal(more.length, 0, 'one template');
  assert.match(tmpl!.name, /^mvirt-template-default-1x256-/);
  const vms = everMembers('fast');
  assert.equal(vms.length, 3, 'no VM beyond min was made');
  const booted = vms.filter((v) => v.restoredFrom === undefined);
  assert.deepEqual(
    booted.map((v) => v.id),
    [tmpl!.source.vm],
    'exactly one VM booted: the template was taken of it',
  );
  for (const v of vms.filter((x) => x !== booted[0]))
    assert.equal(v.restoredFrom, tmpl!.id, `${v.name} is a fork of the template`);

  // A job takes one; the refill is a fork of the same template.
  const job = await j.run({ pool: 'fast', argv: ['echo', 'fast'], wait: true });
  assert.equal(job.state, 'succeeded');
  await j.rec.until(
    () => (everMembers('fast').length === 4 ? true : undefined),
    'a fourth member made',
  );
  await poolReady('fast', 3);
  assert.equal(readyMembers('fast').length, 3);
  const refill = everMembers('fast').find((v) => !vms.some((x) => x.id === v.id))!;
  assert.equal(refill.restoredFrom, tmpl!.id);

  // The dry run of the next change knows the template exists now.
  const again = await planSet({ name: 'fast', min: 4 });
  assert.ok(
    again.steps.some((s) =>
      s.endsWith(`, each a fork of the template snapshot ${tmpl!.name}: no boot`),
    ),
    again.steps.join('\n'),
  );
});

test('a template whose fork cannot start goes; the next VM boots and is the new one', async () => {
  const [tmpl] = await templates();
  const fh = await openFile(path.join(j.dataDir, 'snapshots', tmpl!.id, 'state.bin'), 'r+');
  await fh.write(Buffer.from('garbage'), 0, 7, 100);
  await fh.close();
  const before = new Set(everMembers('fast').map((v) => v.id));
  const job = await j.run({ pool: 'fast', argv: ['true'], wait: true });
  assert.equal(job.state, 'succeeded');
  // The refill's fork fails (sha256): the pool says so, drops the template, backs off.
  const troubled = await j.rec.until(
    () => j.rec.poolStates('fast').find((p) => p?.problem !== undefined) ?? undefined,
    'the pool reports the failed fork',
  );
  assert.match(troubled.problem!, /^its last VM could not be made: .*sha256/);
  // Then a VM boots and becomes the new template; the pool is whole and well again.
  const healed = await j.rec.until(() => {
    const p = j.rec.poolStates('fast').at(-1);
    return p && p.vms.ready === 3 && p.problem === undefined ? p : undefined;
  }, 'the pool whole again');
  assert.equal(healed.snapshot, true);
  const now = await templates();
  assert.equal(now.length, 1);
  assert.notEqual(now[0]!.id, tmpl!.id, 'a new template');
  const made = everMembers('fast').filter((v) => !before.has(v.id));
  assert.ok(
    made.some((v) => v.restoredFrom === tmpl!.id),
    'the refill that failed was a fork of the old one',
  );
  assert.ok(
    made.some((v) => v.id === now[0]!.source.vm && v.restoredFrom === undefined),
    'the new template was taken of a VM that booted',
  );
  const warned = await warnings('fast');
  assert.equal(warned.length, 1, 'one event for the problem');
  assert.equal(warned[0]!.message, `pool fast: ${troubled.problem!}`);
  result(await j.c.call('pool.delete', { name: 'fast' }));
});

test('fromSnapshot — members fork that snapshot, which cannot be deleted meanwhile', async () => {
  await j.serviceVm('src');
  const snap = result(await j.c.call('vm.snapshot', { vm: 'src', name: 'base' }));
  const set = result(await j.c.call('pool.set', { name: 'forks', min: 2, fromSnapshot: 'base' }));
  assert.equal(set.fromSnapshot, snap.id, 'stored by id');
  assert.equal(set.snapshot, undefined);
  assert.deepEqual(
    [set.image, set.vcpus, set.memoryMiB],
    [snap.image, snap.vcpus, snap.memoryMiB],
    "the snapshot's image and size",
  );
  await poolReady('forks', 2);
  const vms = readyMembers('forks');
  assert.equal(vms.length, 2);
  for (const v of vms) assert.equal(v.restoredFrom, snap.id, `${v.name} is a fork of base`);

  for (const dryRun of [false, true]) {
    const e = errorOf(await j.c.call('snapshot.delete', { snapshot: 'base', dryRun }));
    assert.equal(e.code, 'SNAPSHOT_IN_USE');
    assert.match(e.message, /^snapshot base is what pool forks makes its VMs from; /);
    assert.deepEqual(e.details, { pools: ['forks'] });
  }
  // Kept on update: min alone changes, the pool still forks base.
  assert.equal(result(await j.c.call('pool.set', { name: 'forks', min: 1 })).fromSnapshot, snap.id);
});

test('pool.set refuses what contradicts the snapshot, and unknown or template snapshots', async () => {
  const [tmpl] = await templates();
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ fromSnapshot: 'base', image: 'default' }, 'INVALID_PARAMS', /takes its image and size/],
    [{ fromSnapshot: 'base', memoryMiB: 512 }, 'INVALID_PARAMS', /takes its image and size/],
    [{ fromSnapshot: 'base', snapshot: true }, 'INVALID_PARAMS', /snapshot or fromSnapshot/],
    [{ fromSnapshot: 'nope' }, 'SNAPSHOT_NOT_FOUND', /no snapshot with id or name nope/],
    [{ fromSnapshot: tmpl!.name }, 'INVALID_PARAMS', /one of mvirtd's templates.*snapshot: true/],
  ];
  for (const [p, code, why] of cases) {
    const e = errorOf(await j.c.call('pool.set', { name: 'other', min: 1, ...p }));
    assert.equal(e.code, code, JSON.stringify(p));
    assert.match(e.message, why);
  }
  // A size for a pool that forks a snapshot: the way out is named.
  const e = errorOf(await j.c.call('pool.set', { name: 'forks', min: 1, vcpus: 2 }));
  assert.equal(e.code, 'INVALID_PARAMS');
  assert.match(e.message, /forks of snapshot snap-\w+, which decides their image and size/);
  assert.equal(errorOf(await j.c.call('pool.get', { name: 'other' })).code, 'POOL_NOT_FOUND');
});

test('a pool whose snapshot is gone makes no VM and says why, until it gets another', async () => {
  const snap = result(await j.c.call('snapshot.get', { snapshot: 'base' }));
  await poolReady('forks', 1);
  // What only a forced delete does (a template's, when its image changes).
  assert.equal(j.d.daemon.store.snapshots.delete(snap.id), true);

  // A job takes the one VM: the pool needs another and cannot make it.
  const job = await j.run({ pool: 'forks', argv: ['true'], wait: true });
  assert.equal(job.state, 'succeeded');
  const stuck = await j.rec.until(
    () => j.rec.poolStates('forks').find((p) => p?.problem !== undefined) ?? undefined,
    'the pool says why it has no VM',
  );
  assert.equal(
    stuck.problem,
    `its snapshot ${snap.id} was deleted: no VM can be made; give the pool another (fromSnapshot) or let its VMs boot (snapshot: false)`,
  );
  // The job's VM goes, the pool looks again (another reconcile): still stuck, no new event.
  await j.rec.until(
    () => (j.rec.vmStates(job.vm!).at(-1) === null ? true : undefined),
    "the job's VM deleted",
  );
  const now = result(await j.c.call('pool.get', { name: 'forks' }));
  assert.equal(now.problem, stuck.problem);
  assert.deepEqual(now.vms, { starting: 0, ready: 0, busy: 0 });
  assert.equal((await warnings('forks')).length, 1, 'one event, not one per look');

  // pool.set keeping the snapshot is refused, naming it; snapshot: false makes the VMs boot.
  const e = errorOf(await j.c.call('pool.set', { name: 'forks', min: 1 }));
  assert.equal(e.code, 'SNAPSHOT_NOT_FOUND');
  assert.match(e.message, new RegExp(`^pool forks's snapshot ${snap.id} was deleted`));
  const set = result(await j.c.call('pool.set', { name: 'forks', min: 1, snapshot: false }));
  assert.equal(set.fromSnapshot, undefined);
  assert.equal(set.problem, undefined, 'a new definition clears the problem');
  await poolReady('forks', 1);
  const [vm] = readyMembers('forks');
  assert.equal(vm!.restoredFrom, undefined, 'it booted');
  result(await j.c.call('pool.delete', { name: 'forks' }));
});
