/**
 * VM manager behaviour that needs no QEMU: boot timeout, hostile agents,
 * deaths noticed, rollback, recovery across a daemon restart. Processes are
 * real (fake backend); everything is awaited on events, never on sleeps.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { ReplyEnvelope } from '../../../protocol/rpc.js';
import { procStartTime } from '../../../host/hypervisors/proc.js';
import { createFakeHypervisor, killFakes, type FakeHypervisor } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { rpcClient, type RpcClient } from '../../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function setup(
  hv: FakeHypervisor,
  args: string[] = [],
  dataDir?: string,
): Promise<{ d: TestDaemon; c: RpcClient }> {
  const d = await startTestDaemon({ hypervisors: [hv], args, ...(dataDir ? { dataDir } : {}) });
  const c = await rpcClient(d);
  cleanups.push(async () => {
    await c.close().catch(() => undefined);
    await d.stop();
    killFakes(hv);
    if (!dataDir) await removeDir(d.dataDir);
  });
  return { d, c };
}

function result<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}
function code(r: ReplyEnvelope): string {
  assert.equal(r.ok, false);
  return r.ok ? '' : r.error.code;
}
const alive = (pid: number): boolean => procStartTime(pid) !== null;

/** Await a condition that follows an event we cannot subscribe to (a reaped pid). */
function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (cond()) return resolve();
      if (performance.now() - t0 > timeoutMs) return reject(new Error('condition not met in time'));
      setTimeout(check, 10);
    };
    check();
  });
}

test('boot timeout: failed with a reason, process killed, runtime cleaned', async () => {
  const hv = createFakeHypervisor({ agent: 'silent' });
  const { d, c } = await setup(hv, ['--boot-timeout-ms', '500']);
  const vm = result(await c.call('vm.create', { name: 't1' }));
  assert.equal(code(await c.call('vm.start', { vm: 't1', wait: true })), 'BOOT_TIMEOUT');
  const rec = result(await c.call('vm.get', { vm: 't1' }));
  assert.equal(rec.state, 'failed');
  assert.match(rec.stateReason ?? '', /boot-timeout-ms/);
  const pid = hv.launched[0]!;
  await until(() => !alive(pid));
  await until(() => d.daemon.store.vms.getRuntime(vm.id) === undefined);
});

test('hostile agent messages are dropped; the daemon and other VMs are unharmed', async () => {
  const bad = createFakeHypervisor({ agent: 'garbage' });
  const { d, c } = await setup(bad, ['--boot-timeout-ms', '1500']);
  result(await c.call('vm.create', { name: 'evil' }));
  assert.equal(code(await c.call('vm.start', { vm: 'evil', wait: true })), 'BOOT_TIMEOUT');
  // A controller cannot forge agent messages either (the broker refuses them).
  const vm = result(await c.call('vm.get', { vm: 'evil' }));
  await c.mqtt.publishAsync(`${d.root}/agent/${vm.id}/up/ready`, 'x').catch(() => undefined);
  const c2 = await rpcClient(d);
  assert.ok(result(await c2.call('system.info')));
  await c2.close();
});

test('a VM process killed from outside is noticed within a second, with an event', async () => {
  const hv = createFakeHypervisor();
  const { d, c } = await setup(hv);
  const vm = result(await c.call('vm.create', { name: 'victim' }));
  const started = result(await c.call('vm.start', { vm: 'victim', wait: true }));
  const failed = await c.watch(`${d.root}/vm/${vm.id}/events`, (_t, p) => {
    return (JSON.parse(p.toString()) as { to?: string }).to === 'failed';
  });
  const t0 = performance.now();
  process.kill(started.pid!, 'SIGKILL');
  const ev = JSON.parse((await failed.message).toString()) as { reason: string };
  assert.ok(performance.now() - t0 < 1000, `noticed after ${performance.now() - t0} ms`);
  assert.match(ev.reason, /SIGKILL/);
  const events = result(await c.call('events.query', { objectId: vm.id, level: 'warn' }));
  assert.ok(events.events.some((e) => e.message.includes('→ failed')));
  assert.equal(d.daemon.store.vms.getRuntime(vm.id), undefined);
  // A failed VM can be started again.
  assert.equal(result(await c.call('vm.start', { vm: 'victim', wait: true })).state, 'ready');
  result(await c.call('vm.kill', { vm: 'victim' }));
});

test('the guest powering itself off makes the VM stopped', async () => {
  const hv = createFakeHypervisor();
  const { d, c } = await setup(hv);
  const vm = result(await c.call('vm.create', { name: 'selfoff' }));
  const started = result(await c.call('vm.start', { vm: 'selfoff', wait: true }));
  const stopped = await c.watch(`${d.root}/vm/${vm.id}/events`, (_t, p) => {
    return (JSON.parse(p.toString()) as { to?: string }).to === 'stopped';
  });
  process.kill(started.pid!, 'SIGHUP'); // the fake guest's "poweroff"
  await stopped.message;
});

test('a failed launch rolls back and leaves the VM failed with BOOT_FAILED', async () => {
  const hv = createFakeHypervisor({ failLaunch: true });
  const { d, c } = await setup(hv);
  const vm = result(await c.call('vm.create', { name: 'nolaunch' }));
  const r = await c.call('vm.start', { vm: 'nolaunch', wait: true });
  assert.equal(code(r), 'BOOT_FAILED');
  assert.match(r.ok ? '' : r.error.message, /launch hypervisor/);
  const rec = result(await c.call('vm.get', { vm: 'nolaunch' }));
  assert.equal(rec.state, 'failed');
  assert.equal(d.daemon.store.vms.allocated().vcpus, 0, 'nothing stays allocated');
  result(await c.call('vm.delete', { vm: vm.id }));
});

test('recovery: a restarted daemon re-attaches running VMs without rebooting them', async () => {
  const hv = createFakeHypervisor();
  const dataDir = await makeTempDir();
  cleanups.push(() => removeDir(dataDir));
  const first = await startTestDaemon({ hypervisors: [hv], dataDir });
  let c = await rpcClient(first);
  const vm = result(await c.call('vm.create', { name: 'survivor' }));
  result(await c.call('vm.create', { name: 'casualty' }));
  const started = result(await c.call('vm.start', { vm: 'survivor', wait: true }));
  const doomed = result(await c.call('vm.start', { vm: 'casualty', wait: true }));
  await c.close();
  await first.stop(); // leaves VMs running (no --stop-vms-on-exit)
  assert.ok(alive(started.pid!), 'the VM outlives the daemon');
  process.kill(doomed.pid!, 'SIGKILL'); // dies while no daemon watches
  await until(() => !alive(doomed.pid!));

  const second = await startTestDaemon({ hypervisors: [hv], dataDir });
  cleanups.push(async () => {
    await second.stop();
    killFakes(hv);
  });
  c = await rpcClient(second);
  cleanups.push(() => c.close());
  const back = result(await c.call('vm.get', { vm: 'survivor' }));
  assert.equal(back.state, 'ready');
  assert.equal(back.pid, started.pid, 'same process: no reboot');
  assert.equal(hv.launched.length, 2, 'nothing relaunched');
  const lost = result(await c.call('vm.get', { vm: 'casualty' }));
  assert.equal(lost.state, 'failed');
  assert.match(lost.stateReason ?? '', /not re-attached/);
  assert.equal(second.daemon.store.vms.getRuntime(lost.id), undefined);
  // The agent channel is back: a graceful stop goes through the agent.
  hv.received.length = 0;
  const stopped = result(await c.call('vm.stop', { vm: vm.id, timeoutMs: 5000 }));
  assert.equal(stopped.state, 'stopped');
  assert.ok(
    hv.received.some((m) => m.kind === 'power'),
    'poweroff went through the agent',
  );
});

test('--stop-vms-on-exit stops every VM on a clean shutdown', async () => {
  const hv = createFakeHypervisor();
  const d = await startTestDaemon({ hypervisors: [hv], args: ['--stop-vms-on-exit'] });
  const c = await rpcClient(d);
  result(await c.call('vm.create', { name: 'x' }));
  const r = result(await c.call('vm.start', { vm: 'x', wait: true }));
  await c.close();
  await d.stop();
  assert.equal(d.daemon.store.db.open, false);
  assert.ok(!alive(r.pid!), 'stopped with the daemon');
  killFakes(hv);
  await removeDir(d.dataDir);
});
