/**
 * Spares (host/jobs/spares.ts) on a backend that can save state (the fake's
 * snapshots capability; a resume is a new boot of the real agent core): after
 * a job without a VM, a fork of its kind's template waits, ready, for the
 * next one; that job runs on it and another is resumed. Spares give way to
 * any VM that needs their room, go after their kind's idle time, are not made
 * with --spares 0, and do not outlive a daemon restart.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { DryRunPlan, VmRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

const dirs: string[] = [];
after(async () => {
  await cleanupAll();
  for (const d of dirs) await removeDir(d);
});

const SPARE = 'mvirt.spare';
const saving = () => createFakeHypervisor({ agent: 'real', capabilities: { snapshots: true } });

const spares = (j: JobDaemon): VmRecord[] =>
  j.rec.liveVms().filter((v) => v.metadata[SPARE] !== undefined);

/** A spare other than `not`, ready. */
const readySpare = (j: JobDaemon, not: string[] = []): Promise<VmRecord> =>
  j.rec.until(
    () => spares(j).find((v) => v.state === 'ready' && !not.includes(v.id)),
    'a ready spare',
  );

const noJobVm = (j: JobDaemon) => j.run({ argv: ['true'], wait: true });

test('after a job without a VM a spare waits; the next job runs on it and another is resumed', async () => {
  const j = await startJobDaemon({ hv: saving() });
  const first = await noJobVm(j);
  assert.equal(first.exitCode, 0);
  const spare = await readySpare(j);
  assert.match(spare.name, /^spare-[0-9a-f]{10}$/);
  assert.equal(spare.kind, 'ephemeral');
  assert.equal(spare.metadata[SPARE], 'default/1x256');
  const tmpl = result(await j.c.call('snapshot.list', {})).snapshots.find((s) =>
    s.name.startsWith('mvirt-template-'),
  );
  assert.equal(spare.restoredFrom, tmpl?.id, 'a fork of the template');

  const plan = result(
    await j.c.call('job.run', { argv: ['true'], dryRun: true }),
  ) as unknown as DryRunPlan;
  assert.ok(
    plan.steps.some((s) => s.startsWith(`take spare VM ${spare.name} (resumed ahead`)),
    plan.steps.join('\n'),
  );

  const second = await noJobVm(j);
  assert.equal(second.exitCode, 0);
  assert.equal(second.vm, spare.id, 'the job ran on the spare');
  const next = await readySpare(j, [spare.id]);
  assert.notEqual(next.id, spare.id);
  // The job's VM went with its job, as any VM made for a job.
  await j.rec.until(() => !j.rec.liveVms().some((v) => v.id === spare.id) || undefined, 'gone');
  assert.equal(spares(j).length, 1, 'one spare per kind');
});

test('spares give way: a VM that needs their room destroys them first, and none is made without room', async () => {
  const j = await startJobDaemon({ hv: saving(), args: ['--max-vms', '2'] });
  await noJobVm(j);
  const spare = await readySpare(j);
  await j.serviceVm('a');
  result(await j.c.call('vm.create', { name: 'b' }));
  const plan = result(
    await j.c.call('vm.start', { vm: 'b', dryRun: true }),
  ) as unknown as DryRunPlan;
  assert.ok(
    plan.steps.some((s) => s.startsWith('destroy idle spare VMs')),
    plan.steps.join('\n'),
  );
  const b = result(await j.c.call('vm.start', { vm: 'b', wait: true }));
  assert.equal(b.state, 'ready', 'b got the spare’s room');
  assert.equal(
    result(await j.c.call('vm.list', {})).vms.some((v) => v.id === spare.id),
    false,
    'the spare is gone',
  );
  // A job now queues behind the full host; no spare is made for it.
  const queued = await j.run({ argv: ['true'] });
  assert.equal(queued.state, 'queued');
  result(await j.c.call('vm.kill', { vm: 'b' }));
  const done = await j.rec.job(queued.jobId, ['succeeded']);
  assert.equal(done.exitCode, 0);
  const list = result(await j.c.call('vm.list', {})).vms;
  assert.ok(list.filter((v) => v.state !== 'stopped').length <= 2, JSON.stringify(list));
});

test('--spare-idle-s: a kind without jobs loses its spares; --spares 0 makes none', async () => {
  const idle = await startJobDaemon({ hv: saving(), args: ['--spare-idle-s', '1'] });
  await noJobVm(idle);
  const spare = await readySpare(idle);
  await idle.rec.until(
    () => !idle.rec.liveVms().some((v) => v.id === spare.id) || undefined,
    'the idle spare destroyed',
    10_000,
  );

  const none = await startJobDaemon({ hv: saving(), args: ['--spares', '0'] });
  await noJobVm(none);
  const third = await noJobVm(none);
  assert.equal(third.exitCode, 0);
  assert.deepEqual(spares(none), []);
  assert.deepEqual(
    result(await none.c.call('vm.list', {})).vms.filter((v) => v.metadata[SPARE] !== undefined),
    [],
  );
});

test('a daemon restart: the spare left running is destroyed, and the next job makes a new one', async () => {
  const hv = saving();
  const dataDir = await makeTempDir('mvirt-spares-restart-');
  dirs.push(dataDir);
  const first = await startJobDaemon({ hv, dataDir });
  await noJobVm(first);
  const spare = await readySpare(first);
  await first.stopDaemon(); // VMs keep running

  const second = await startJobDaemon({ hv, dataDir });
  // Destroyed by recovery, maybe before the recorder subscribed (then its
  // retained state was gone already): gone now, or its delete is still to come.
  if ((await second.c.call('vm.get', { vm: spare.id })).ok)
    await second.rec.until(
      () => (second.rec.vmStates(spare.id).at(-1) === null ? true : undefined),
      'the leftover spare destroyed',
    );
  assert.equal(errorOf(await second.c.call('vm.get', { vm: spare.id })).code, 'VM_NOT_FOUND');
  const job = await noJobVm(second);
  assert.notEqual(job.vm, spare.id);
  await readySpare(second, [spare.id]);
});
