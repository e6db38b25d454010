/**
 * Warm pools: pool.set keeps `min` VMs ready, a job sent to the pool takes one
 * of them (no boot in its path) and the pool refills; the used VM is destroyed;
 * jobs beyond the idle VMs make the pool boot up to `max`; pool.delete removes
 * the idle VMs.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { VmRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import {
  cleanupAll,
  errorOf,
  gated,
  open,
  result,
  startJobDaemon,
  takeErrorLogs,
  TERMINAL,
  until,
  type JobDaemon,
} from '../../support/jobs.js';

let j: JobDaemon;
const dirs: string[] = [];
before(async () => {
  j = await startJobDaemon();
});
after(async () => {
  await cleanupAll();
  for (const d of dirs) await removeDir(d);
});

/** The latest state of every VM of pool `name` (deleted ones left out). */
function members(name: string): VmRecord[] {
  return j.rec.liveVms().filter((v) => v.metadata['mvirt.pool'] === name);
}

/** Ids of every VM that was ever a member of pool `name`. */
function everMembers(name: string): string[] {
  const ids = new Set<string>();
  for (const m of j.rec.seen) {
    if (!/\/vm\/[^/]+\/state$/.test(m.topic) || m.payload.length === 0) continue;
    const v = JSON.parse(m.payload.toString()) as VmRecord;
    if (v.metadata['mvirt.pool'] === name) ids.add(v.id);
  }
  return [...ids];
}

const deleted = (vmId: string): Promise<true> =>
  j.rec.until(() => (j.rec.vmStates(vmId).at(-1) === null ? true : undefined), `${vmId} deleted`);

test('a pool keeps min VMs ready; a job takes one and the pool refills', async () => {
  const set = result(await j.c.call('pool.set', { name: 'warm', min: 1, max: 2 }));
  assert.equal(set.name, 'warm');
  assert.equal(set.min, 1);
  assert.equal(set.image, 'default');

  const [idle] = await j.rec.until(() => {
    const ready = members('warm').filter((v) => v.state === 'ready');
    return ready.length === 1 ? ready : undefined;
  }, 'one ready pool VM');
  assert.equal(idle!.kind, 'ephemeral');
  await j.rec.until(
    () => (j.rec.poolStates('warm').at(-1)?.vms.ready === 1 ? true : undefined),
    'pool state says 1 ready',
  );
  assert.equal(members('warm').length, 1, 'exactly min VMs');

  const go = path.join(j.tmp, 'pool-go');
  const job = await j.run({ pool: 'warm', argv: gated(go) });
  const running = await j.rec.job(job.jobId, ['running', ...TERMINAL]);
  assert.equal(running.state, 'running');
  assert.equal(running.vm, idle!.id, 'the job took the ready VM');
  assert.deepEqual(running.target, { kind: 'pool', pool: 'warm' });

  // The pool refills while the job runs: another VM becomes ready.
  const [refill] = await j.rec.until(() => {
    const r = members('warm').filter((v) => v.id !== idle!.id && v.state === 'ready');
    return r.length > 0 ? r : undefined;
  }, 'a second pool VM ready');
  // One VM replaces the one taken: never more than max VMs, no boot wasted.
  assert.deepEqual(
    everMembers('warm').sort(),
    [idle!.id, refill!.id].sort(),
    'exactly one VM was booted to refill the pool',
  );
  // Ready as a VM is not yet ready in the pool: its warm-up exec comes first.
  await j.rec.until(
    () => (j.rec.poolStates('warm').at(-1)?.vms.ready === 1 ? true : undefined),
    'pool state says the refill is ready',
  );
  const pool = result(await j.c.call('pool.get', { name: 'warm' }));
  assert.deepEqual(pool.vms, { starting: 0, ready: 1, busy: 1 });

  await open(go);
  assert.equal((await j.rec.job(job.jobId, TERMINAL)).state, 'succeeded');
  await deleted(idle!.id); // a pool VM serves one job
  const after1 = result(await j.c.call('pool.get', { name: 'warm' }));
  assert.deepEqual(after1.vms, { starting: 0, ready: 1, busy: 0 });
  assert.deepEqual(
    members('warm').map((v) => v.id),
    [refill!.id],
  );

  const list = result(await j.c.call('pool.list'));
  assert.deepEqual(
    list.pools.map((p) => p.name),
    ['warm'],
  );

  // pool.delete removes the idle VM and the pool.
  assert.deepEqual(result(await j.c.call('pool.delete', { name: 'warm' })), {});
  await deleted(refill!.id);
  assert.equal(errorOf(await j.c.call('pool.get', { name: 'warm' })).code, 'POOL_NOT_FOUND');
  await j.rec.until(
    () => (j.rec.poolStates('warm').at(-1) === null ? true : undefined),
    'the pool state is cleared',
  );
  assert.equal(result(await j.c.call('vm.list')).vms.length, 0);
});

test('snapshot: true on a backend that cannot save state is refused, and no pool is made', async () => {
  for (const dryRun of [false, true]) {
    const e = errorOf(await j.c.call('pool.set', { name: 'fast', min: 1, snapshot: true, dryRun }));
    assert.equal(e.code, 'CAPABILITY_UNSUPPORTED');
    // The fake registers as the qemu backend.
    assert.equal(
      e.message,
      "snapshot: true makes pool VMs forks of a template snapshot, but the qemu backend cannot save a VM's state",
    );
  }
  assert.equal(errorOf(await j.c.call('pool.get', { name: 'fast' })).code, 'POOL_NOT_FOUND');
});

test('with no idle VM a pool job makes the pool boot one (up to max)', async () => {
  result(await j.c.call('pool.set', { name: 'cold', min: 0, max: 1 }));
  assert.equal(members('cold').length, 0, 'min 0: nothing booted');
  const r = result(
    await j.c.call(
      'job.run',
      { pool: 'cold', argv: ['echo', 'cold start'], wait: true },
      { timeoutMs: 20_000 },
    ),
  );
  assert.equal(r.state, 'succeeded', r.reason);
  assert.equal(r.stdout, 'cold start\n');
  await deleted(r.vm!);
  assert.equal(members('cold').length, 0, 'back to min 0');
  result(await j.c.call('pool.delete', { name: 'cold' }));
});

/** Most members of pool `name` up at the same time (not stopped, failed or deleted). */
function maxAlive(name: string): number {
  const up = new Set<string>();
  const members = new Set<string>();
  let most = 0;
  for (const m of j.rec.seen) {
    const t = m.topic.split('/');
    if (t.at(-1) !== 'state' || t.at(-3) !== 'vm') continue;
    const id = t.at(-2)!;
    const v = m.payload.length === 0 ? null : (JSON.parse(m.payload.toString()) as VmRecord);
    if (v?.metadata['mvirt.pool'] === name) members.add(id);
    if (!members.has(id)) continue;
    if (v && v.state !== 'stopped' && v.state !== 'failed') up.add(id);
    else up.delete(id);
    most = Math.max(most, up.size);
  }
  return most;
}

test('a pool at max: a second job waits, and runs on a fresh VM once the first is gone', async () => {
  result(await j.c.call('pool.set', { name: 'one', min: 1, max: 1 }));
  const [vm1] = await j.rec.until(() => {
    const r = members('one').filter((v) => v.state === 'ready');
    return r.length === 1 ? r : undefined;
  }, 'the pool VM ready');
  const go = path.join(j.tmp, 'one-go');
  const job1 = await j.run({ pool: 'one', argv: gated(go) });
  assert.equal((await j.rec.job(job1.jobId, ['running'])).vm, vm1!.id);
  const job2 = await j.run({ pool: 'one', argv: ['echo', 'second'] });
  assert.equal(job2.state, 'queued');
  assert.equal(job2.queuePosition, 1);

  await open(go);
  assert.equal((await j.rec.job(job1.jobId, TERMINAL)).state, 'succeeded');
  const done2 = await j.rec.job(job2.jobId, TERMINAL);
  assert.equal(done2.state, 'succeeded', done2.reason);
  assert.notEqual(done2.vm, vm1!.id, 'a VM serves one pool job only');
  // The pool refills once the second job's VM is gone, and never exceeded max.
  await deleted(done2.vm!);
  await j.rec.until(
    () => (members('one').some((v) => v.state === 'ready') ? true : undefined),
    'the pool refilled',
  );
  assert.equal(maxAlive('one'), 1, 'never more than max VMs up at once');
  result(await j.c.call('pool.delete', { name: 'one' }));
  await j.rec.until(() => (members('one').length === 0 ? true : undefined), 'pool emptied');
});

test('after a daemon restart a pool VM running a job is not handed to another job', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const dataDir = await makeTempDir('mvirt-jobs-pool-');
  const first = await startJobDaemon({ hv, dataDir });
  dirs.push(dataDir);
  result(await first.c.call('pool.set', { name: 'keep', min: 1, max: 2 }));
  await first.rec.until(
    () => (first.rec.poolStates('keep').at(-1)?.vms.ready === 1 ? true : undefined),
    'pool ready',
  );
  const go = path.join(first.tmp, 'keep-go');
  const job1 = await first.run({ pool: 'keep', argv: gated(go) });
  const vm1 = (await first.rec.job(job1.jobId, ['running'])).vm!;
  await first.rec.until(
    () => (first.rec.poolStates('keep').at(-1)?.vms.ready === 1 ? true : undefined),
    'pool refilled',
  );
  await first.stopDaemon();

  const second = await startJobDaemon({ hv, dataDir });
  const pool = result(await second.c.call('pool.get', { name: 'keep' }));
  assert.deepEqual(pool.vms, { starting: 0, ready: 1, busy: 1 });
  const r2 = result(
    await second.c.call('job.run', { pool: 'keep', argv: ['echo', 'two'], wait: true }),
  );
  assert.equal(r2.state, 'succeeded', r2.reason);
  assert.notEqual(r2.vm, vm1, 'not the VM of the job still running');
  assert.equal(result(await second.c.call('job.get', { jobId: job1.jobId })).state, 'running');
  await open(go);
  const done1 = await second.rec.job(job1.jobId, TERMINAL);
  assert.equal(done1.state, 'succeeded');
  assert.equal(done1.vm, vm1);
  await second.rec.until(
    () => (second.rec.vmStates(vm1).at(-1) === null ? true : undefined),
    'the job VM destroyed after its job',
  );
  result(await second.c.call('pool.delete', { name: 'keep' }));
});

test('pool.delete while its VMs boot: each is killed, then deleted; none gets to ready', async () => {
  // pool.delete right after pool.set meets the VMs between their creation and
  // their boot's admission (still `stopped`, the boot holding the VM's lock) or
  // starting; the slow agent keeps them from getting ready meanwhile. The
  // destroyer used to skip the kill of a `stopped` VM, and the delete, queued
  // behind the boot, then found it `starting`: VM_RUNNING, "cannot destroy a VM".
  const slow = await startJobDaemon({
    hv: createFakeHypervisor({ agent: 'real', realAgentStartDelayMs: 2000 }),
  });
  result(await slow.c.call('pool.set', { name: 'brief', min: 2 }));
  result(await slow.c.call('pool.delete', { name: 'brief' }));
  const history = (id: string): (VmRecord | null)[] => slow.rec.vmStates(id);
  const ids = await slow.rec.until(() => {
    const all = new Set(
      slow.rec
        .allVmStates()
        .filter((v) => v.metadata['mvirt.pool'] === 'brief')
        .map((v) => v.id),
    );
    return all.size === 2 && [...all].every((id) => history(id).at(-1) === null)
      ? [...all]
      : undefined;
  }, 'both pool VMs deleted');
  assert.deepEqual(takeErrorLogs(), [], 'no VM failed to be destroyed');
  for (const id of ids) {
    const seen = history(id).filter((v): v is VmRecord => v !== null);
    const states = seen.map((v) => v.state);
    assert.ok(!states.includes('ready'), `${id} never ready: ${states.join(' > ')}`);
    // Launched: killed (stopping, then stopped as `killed`) before its delete.
    if (states.includes('starting')) {
      assert.ok(states.includes('stopping'), `${id} killed: ${states.join(' > ')}`);
      assert.equal(seen.at(-1)!.state, 'stopped');
      assert.match(seen.at(-1)!.stateReason ?? '', /killed/);
    }
  }
  // No fake guest process is left behind.
  await until(
    () => slow.hv.launched.every((pid) => !existsSync(`/proc/${pid}`)),
    'the guest processes gone',
  );
});
