/**
 * Dry runs of the vm.* methods against the real mvirtd (fake hypervisor, real
 * SQLite file, real volume files): each answers with the plan of what the
 * real call then does, refuses what the real call refuses with the same
 * code, and leaves the database file, the data dir listing, the processes
 * and the published state exactly as they were.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { DryRunPlan, MutatingMethod, ParamsOf } from '../../protocol/rpc.js';
import {
  errorOf,
  record,
  result as ok,
  rpcClient,
  type Recorder,
  type RpcClient,
} from '../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../harness/daemon.js';
import { createFakeHypervisor, killFakes } from '../../harness/fake-vms.js';
import { removeDir } from '../../harness/paths.js';
import { unchanged } from '../support/dry-run.js';

const hv = createFakeHypervisor();
let d: TestDaemon;
let c: RpcClient;
let rec: Recorder;

before(async () => {
  // Roll-ups held still: the database file is compared byte for byte.
  d = await startTestDaemon({ hypervisors: [hv], rollupFlushMs: 3600_000 });
  c = await rpcClient(d);
  rec = await record(d);
});
after(async () => {
  await rec?.close();
  await c?.close();
  await d?.daemon.vms.shutdown(true).catch(() => undefined);
  await d?.stop();
  killFakes(hv);
  if (d) await removeDir(d.dataDir);
});

/** A dry run through the wire, with nothing changed; its plan. */
async function dry<M extends MutatingMethod>(method: M, params: ParamsOf<M>): Promise<DryRunPlan> {
  const published = rec.seen.length;
  const r = await unchanged(
    d.dataDir,
    () => c.send(method, { ...params, dryRun: true }),
    `${method} dry run`,
  );
  assert.ok(r.ok, `${method} dry run: ${JSON.stringify(r)}`);
  await c.call('system.info'); // a round trip: anything the dry run published has arrived
  assert.equal(rec.seen.length, published, `${method} dry run published state`);
  const plan = r.result as DryRunPlan;
  assert.equal(plan.dryRun, true);
  assert.equal(plan.method, method);
  return plan;
}

/** The dry run is refused with the code the real call gets, nothing changed either way. */
async function sameRefusal<M extends MutatingMethod>(
  method: M,
  params: ParamsOf<M>,
  code: string,
): Promise<void> {
  const r = await unchanged(
    d.dataDir,
    () => c.send(method, { ...params, dryRun: true }),
    `${method} refused dry run`,
  );
  assert.equal(errorOf(r).code, code, `${method} dry run`);
  assert.equal(errorOf(await c.call(method, params)).code, code, `${method} for real`);
}

test('vm.create and vm.start: the plan names the checks, the boot steps, the argv and the files', async () => {
  const vol = ok(await c.call('volume.create', { name: 'dry-data', sizeMiB: 8 }));
  const create = await dry('vm.create', { name: 'dry1', disks: [{ volume: 'dry-data' }] });
  assert.ok(create.admission.includes('name dry1 is free'), create.admission.join('; '));
  assert.ok(create.changes.some((x) => x.startsWith('vm dry1: created')));
  assert.ok(create.changes.some((x) => x.includes(vol.id) && x.includes('attached to VM dry1')));
  assert.equal(d.daemon.store.vms.find('dry1'), undefined, 'no VM row');

  const vm = ok(await c.call('vm.create', { name: 'dry1', disks: [{ volume: 'dry-data' }] }));
  await sameRefusal('vm.create', { name: 'dry1' }, 'VM_EXISTS');

  const start = await dry('vm.start', { vm: 'dry1' });
  assert.deepEqual(start.steps, [
    'resolve image',
    'check backend',
    'find saved state',
    'admission',
    'prepare dir',
    'link volumes',
    'prepare network',
    'launch hypervisor',
    'persist runtime',
    'attach console',
    'connect agent channel',
  ]);
  assert.ok(
    start.admission.some((a) => a.startsWith('capacity: 1 of ')),
    start.admission.join('; '),
  );
  const exec = start.commands.find((x) => x.kind === 'exec');
  assert.deepEqual(exec?.kind === 'exec' ? exec.argv.slice(0, 2) : [], [process.execPath, '-e']);
  assert.ok(start.files.create.includes(`vm/${vm.id}/`), start.files.create.join(' '));
  assert.ok(start.files.create.includes(`vm/${vm.id}/${vol.id}.raw`), 'the volume link');
  assert.ok(start.changes.includes('vm dry1: stopped → starting'));

  const launched = hv.launched.length;
  const up = ok(await c.call('vm.start', { vm: 'dry1', wait: true }));
  assert.equal(up.state, 'ready');
  assert.equal(hv.launched.length, launched + 1, 'the real start launched; the dry run had not');

  // Up already: nothing to do, said so.
  assert.deepEqual((await dry('vm.start', { vm: 'dry1' })).steps, []);
});

test('a running VM: stop, kill, pause, reboot planned; resume, delete and hot-plug refused as for real', async () => {
  const vm = ok(await c.call('vm.get', { vm: 'dry1' }));
  assert.equal(vm.state, 'ready');
  const stop = await dry('vm.stop', { vm: 'dry1', timeoutMs: 1234 });
  assert.ok(
    stop.steps.some((s) => s.includes('1234 ms')),
    stop.steps.join('; '),
  );
  assert.ok(stop.changes.includes('vm dry1: ready → stopping → stopped'));

  const kill = await dry('vm.kill', { vm: 'dry1' });
  assert.deepEqual(kill.commands, [{ kind: 'signal', pid: vm.pid, signal: 'SIGKILL' }]);

  assert.ok((await dry('vm.pause', { vm: 'dry1' })).changes.includes('vm dry1: ready → paused'));
  assert.ok(
    (await dry('vm.reboot', { vm: 'dry1' })).changes.includes('vm dry1: ready → starting → ready'),
  );
  await sameRefusal('vm.resume', { vm: 'dry1' }, 'VM_BAD_STATE');
  await sameRefusal('vm.delete', { vm: 'dry1' }, 'VM_RUNNING');
  // The fake backend cannot hot-plug.
  const v2 = ok(await c.call('volume.create', { name: 'dry-extra', sizeMiB: 4 }));
  await sameRefusal('vm.attachDisk', { vm: 'dry1', volume: v2.id }, 'CAPABILITY_UNSUPPORTED');
  assert.equal(ok(await c.call('vm.get', { vm: 'dry1' })).state, 'ready', 'still up');
});

test('a stopped VM: disks recorded for the next boot, delete removes its folder', async () => {
  ok(await c.call('vm.stop', { vm: 'dry1' }));
  const vm = ok(await c.call('vm.get', { vm: 'dry1' }));
  const attach = await dry('vm.attachDisk', { vm: 'dry1', volume: 'dry-extra' });
  assert.deepEqual(attach.steps, ['record']);
  await sameRefusal('vm.attachDisk', { vm: 'dry1', volume: 'dry-data' }, 'VOLUME_IN_USE');
  const detach = await dry('vm.detachDisk', { vm: 'dry1', volume: 'dry-data' });
  assert.ok(detach.changes.some((x) => x.includes('detached (for its next boot)')));
  await sameRefusal('vm.detachDisk', { vm: 'dry1', volume: 'dry-extra' }, 'DISK_NOT_ATTACHED');

  const del = await dry('vm.delete', { vm: 'dry1' });
  assert.deepEqual(del.files.remove, [`vm/${vm.id}/`]);
  assert.ok(del.changes.includes('vm dry1: deleted'));
  ok(await c.call('vm.delete', { vm: 'dry1' }));
  await sameRefusal('vm.start', { vm: 'dry1' }, 'VM_NOT_FOUND');
  await sameRefusal('vm.kill', { vm: 'nope' }, 'VM_NOT_FOUND');
});
