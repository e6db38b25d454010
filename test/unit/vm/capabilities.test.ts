/**
 * Backend capabilities are checked before an operation: a backend that lacks
 * one is never asked, and the caller gets CAPABILITY_UNSUPPORTED naming the
 * backend. And recovery leaves a leftover process to its backend: one it
 * cannot re-attach is ended by the backend's dispose(), not by the VM manager.
 * Real processes behind a fake backend (harness/fake-vms.ts).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import type { ReplyEnvelope, VmRecord } from '../../../protocol/rpc.js';
import { procStartTime } from '../../../host/hypervisors/proc.js';
import {
  createFakeHypervisor,
  killFakes,
  type FakeHypervisor,
  type FakeOptions,
} from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { rpcClient, type RpcClient } from '../../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';
import { fakeElfKernel, gzipBzImage } from '../../../harness/kernels.js';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function setup(
  opts: FakeOptions,
): Promise<{ hv: FakeHypervisor; d: TestDaemon; c: RpcClient }> {
  const hv = createFakeHypervisor({ name: 'lean', ...opts });
  const d = await startTestDaemon({ hypervisors: [hv], args: ['--default-backend', 'lean'] });
  const c = await rpcClient(d);
  cleanups.push(async () => {
    await c.close().catch(() => undefined);
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
  });
  return { hv, d, c };
}

function result<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

function unsupported(r: ReplyEnvelope, capability: string): void {
  if (r.ok) return assert.fail('accepted');
  assert.equal(r.error.code, 'CAPABILITY_UNSUPPORTED');
  assert.match(r.error.message, /backend lean/);
  const details = r.error.details as { backend?: string; capability?: string };
  assert.equal(details.backend, 'lean');
  assert.equal(details.capability, capability);
}

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

test('pause, resume and reboot on a backend without them: CAPABILITY_UNSUPPORTED, the VM untouched', async () => {
  const { hv, c } = await setup({ capabilities: { pause: false, reboot: false } });
  result(await c.call('vm.create', { name: 'lean-1' }));
  const up = result(await c.call('vm.start', { vm: 'lean-1', wait: true }));
  assert.equal(up.state, 'ready');
  unsupported(await c.call('vm.pause', { vm: 'lean-1' }), 'pause');
  unsupported(await c.call('vm.resume', { vm: 'lean-1' }), 'pause');
  unsupported(await c.call('vm.reboot', { vm: 'lean-1' }), 'reboot');
  const after = result(await c.call('vm.get', { vm: 'lean-1' }));
  assert.equal(after.state, 'ready', 'still ready: nothing reached the backend');
  assert.equal(after.pid, up.pid);
  assert.notEqual(procStartTime(up.pid!), null, 'the process was not signalled');
  assert.equal(hv.launched.length, 1, 'no relaunch');
  // What it can do still works.
  assert.equal((result(await c.call('vm.stop', { vm: 'lean-1' })) as VmRecord).state, 'stopped');
});

test('a boot on a backend without the agent channel it needs fails before launch', async () => {
  const { hv, c } = await setup({ capabilities: { channels: [] } });
  result(await c.call('vm.create', { name: 'lean-2' }));
  unsupported(await c.call('vm.start', { vm: 'lean-2', wait: true }), 'channels');
  const rec = result(await c.call('vm.get', { vm: 'lean-2' }));
  assert.equal(rec.state, 'stopped', 'refused before admission: never starting');
  assert.equal(hv.launched.length, 0, 'nothing launched');
});

test('a boot on a backend without direct kernel boot fails before launch', async () => {
  const { hv, c } = await setup({ capabilities: { directKernelBoot: false } });
  result(await c.call('vm.create', { name: 'lean-3' }));
  unsupported(await c.call('vm.start', { vm: 'lean-3' }), 'directKernelBoot');
  assert.equal(hv.launched.length, 0, 'nothing launched');
});

test('recovery: a leftover its backend cannot re-attach is ended by the backend', async () => {
  const hv = createFakeHypervisor();
  const dataDir = await makeTempDir();
  cleanups.push(() => removeDir(dataDir));
  const first = await startTestDaemon({ hypervisors: [hv], dataDir });
  let c = await rpcClient(first);
  result(await c.call('vm.create', { name: 'orphan' }));
  const up = result(await c.call('vm.start', { vm: 'orphan', wait: true }));
  await c.close();
  await first.stop(); // leaves the VM running
  assert.notEqual(procStartTime(up.pid!), null);

  hv.options.failAttach = true;
  const second = await startTestDaemon({ hypervisors: [hv], dataDir });
  cleanups.push(async () => {
    await second.stop();
    killFakes(hv);
  });
  c = await rpcClient(second);
  cleanups.push(() => c.close());
  assert.deepEqual(hv.disposed, [up.pid], 'the backend disposed of its own process');
  await until(() => procStartTime(up.pid!) === null);
  const rec = result(await c.call('vm.get', { vm: 'orphan' }));
  assert.equal(rec.state, 'failed');
  assert.match(rec.stateReason ?? '', /not re-attached after a daemon restart: .*control socket/);
  assert.equal(second.daemon.store.vms.getRuntime(rec.id), undefined);
});

test('a disk snapshot of a running VM on a backend without live disk snapshots: CAPABILITY_UNSUPPORTED, nothing changed', async () => {
  const { hv, c } = await setup({});
  assert.ok(!hv.capabilities.liveDiskSnapshots);
  result(await c.call('volume.create', { name: 'lean-vol', sizeMiB: 1, format: 'qcow2' }));
  result(await c.call('vm.create', { name: 'lean-5', disks: [{ volume: 'lean-vol' }] }));
  // Stopped, the volume is snapshotted with qemu-img whatever the backend.
  result(await c.call('volume.snapshot', { volume: 'lean-vol', name: 's0' }));
  const up = result(await c.call('vm.start', { vm: 'lean-5', wait: true }));
  unsupported(
    await c.call('volume.snapshot', { volume: 'lean-vol', name: 's1' }),
    'liveDiskSnapshots',
  );
  unsupported(
    await c.call('volume.deleteSnapshot', { volume: 'lean-vol', snapshot: 's0' }),
    'liveDiskSnapshots',
  );
  // Their dry runs make the VM's checks too.
  unsupported(
    await c.send('volume.snapshot', { volume: 'lean-vol', name: 's1', dryRun: true }),
    'liveDiskSnapshots',
  );
  unsupported(
    await c.send('volume.deleteSnapshot', { volume: 'lean-vol', snapshot: 's0', dryRun: true }),
    'liveDiskSnapshots',
  );
  const names = result(await c.call('volume.snapshots', { volume: 'lean-vol' })).snapshots;
  assert.deepEqual(
    names.map((s) => s.name),
    ['s0'],
  );
  assert.equal(result(await c.call('vm.get', { vm: 'lean-5' })).pid, up.pid);
});

test('a backend that boots only ELF kernels gets the one derived from the image, or a typed refusal', async () => {
  const { hv, d, c } = await setup({ capabilities: { kernelFormats: ['elf'] } });
  const vmlinuz = path.join(d.dataDir, 'images/default/vmlinuz');
  // A kernel that is no bzImage: nothing to take an ELF from.
  await writeFile(vmlinuz, 'not a kernel');
  result(await c.call('vm.create', { name: 'lean-6' }));
  const r = await c.call('vm.start', { vm: 'lean-6', wait: true });
  assert.ok(!r.ok && r.error.code === 'KERNEL_UNSUITABLE', JSON.stringify(r));
  assert.match(r.error.message, /vmlinuz: not a bzImage/);
  assert.equal(hv.launched.length, 0, 'nothing launched');

  const elf = fakeElfKernel({ padding: 4096 });
  await writeFile(vmlinuz, gzipBzImage(elf));
  result(await c.call('vm.start', { vm: 'lean-6', wait: true }));
  const kernel = hv.specs.at(-1)!.kernel;
  assert.equal(path.dirname(kernel), path.join(d.dataDir, 'cache', 'kernels'));
  assert.ok((await readFile(kernel)).equals(elf));
});
