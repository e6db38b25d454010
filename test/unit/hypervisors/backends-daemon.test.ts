/**
 * cloud-hypervisor and Firecracker behind the whole daemon, as fake VMMs:
 * `vm.create {backend}` picks the backend per VM, the VM boots and its agent
 * (the real agent core) comes up over the hybrid vsock and runs a job; the
 * managers refuse what a backend lacks with CAPABILITY_UNSUPPORTED naming it;
 * system.info shows each backend's capability map; a backend whose program
 * is missing gets BACKEND_UNAVAILABLE saying so.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createLogger } from '../../../host/log.js';
import { createCloudHypervisorBackend } from '../../../host/hypervisors/cloud-hypervisor/backend.js';
import { createFirecrackerBackend } from '../../../host/hypervisors/firecracker/backend.js';
import { rpcClient, result, errorOf, type RpcClient } from '../../../harness/client.js';
import { startTestDaemon, testLogger, type TestDaemon } from '../../../harness/daemon.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { fakeVmmBinary } from '../../support/backend-cases.js';

let d: TestDaemon;
let c: RpcClient;
let tmp: string;

before(async () => {
  tmp = await makeTempDir('mvirt-vmm-');
  const kvm = path.join(tmp, 'kvm');
  writeFileSync(kvm, '');
  const log = process.env.MVIRT_TEST_LOG ? createLogger({ level: 'debug' }) : testLogger();
  const plain = log as unknown as Logger;
  const common = { kvmPath: kvm, agentConnectTimeoutMs: 20_000, launchTimeoutMs: 20_000 };
  d = await startTestDaemon({
    hypervisors: [
      createCloudHypervisorBackend({ ...common, binary: fakeVmmBinary('cloud-hypervisor') }, plain),
      createFirecrackerBackend(
        { ...common, binary: fakeVmmBinary('firecracker'), jailer: 'off' },
        plain,
      ),
      createFirecrackerBackend(
        { ...common, binary: path.join(tmp, 'no-such-firecracker'), jailer: 'off' },
        plain,
      ),
    ].map((hv, i) => (i === 2 ? { ...hv, name: 'missing' } : hv)),
    args: ['--default-backend', 'cloud-hypervisor'],
  });
  c = await rpcClient(d);
});
after(async () => {
  for (const vm of ['ch', 'fc']) await c.call('vm.kill', { vm }).catch(() => undefined);
  await c.close().catch(() => undefined);
  await d.stop();
  await removeDir(d.dataDir);
  await removeDir(tmp);
});

test('system.info shows every backend with its capability map', async () => {
  const info = result(await c.call('system.info'));
  const byName = new Map(info.backends.map((b) => [b.name, b]));
  const ch = byName.get('cloud-hypervisor')!;
  assert.equal(ch.available, true);
  assert.equal(ch.accel, 'kvm');
  assert.deepEqual(ch.capabilities.channels, ['vsock', 'tcp']);
  assert.equal(ch.capabilities.hotplugDisks, true);
  const fc = byName.get('firecracker')!;
  assert.equal(fc.capabilities.reboot, false);
  assert.equal(fc.capabilities.snapshots, true);
  assert.equal(fc.capabilities.forks, false);
  assert.equal(fc.confinement?.jail, false);
  assert.match(fc.confinement?.reasons.join(' ') ?? '', /jailer/);
  const missing = byName.get('missing')!;
  assert.equal(missing.available, false);
  assert.match(missing.reason ?? '', /not installed/);
});

test('a VM on each backend boots, its agent comes up over the hybrid vsock and runs a job', async () => {
  for (const [vm, backend] of [
    ['ch', 'cloud-hypervisor'],
    ['fc', 'firecracker'],
  ] as const) {
    const rec = result(await c.call('vm.create', { name: vm, backend, kind: 'service' }));
    assert.equal(rec.backend, backend);
    result(await c.call('vm.start', { vm }));
    const r = result(
      await c.call('job.run', { vm, argv: ['echo', `hi from ${backend}`], wait: true }),
    );
    assert.equal(r.stdout, `hi from ${backend}\n`);
    const got = result(await c.call('vm.get', { vm }));
    assert.equal(got.state, 'ready');
  }
});

test('the managers refuse what a backend lacks, naming it', async () => {
  const r = await c.call('vm.reboot', { vm: 'fc' });
  const e = errorOf(r);
  assert.equal(e.code, 'CAPABILITY_UNSUPPORTED');
  assert.match(e.message, /backend firecracker cannot reboot/);
  assert.deepEqual(e.details, { backend: 'firecracker', capability: 'reboot' });
  // cloud-hypervisor can: pause and resume go through.
  assert.equal(result(await c.call('vm.pause', { vm: 'ch' })).state, 'paused');
  result(await c.call('vm.resume', { vm: 'ch' }));
});

test('vm.suspend saves a VM and vm.start resumes it; vm.snapshot (a fork) is refused', async () => {
  for (const [vm, backend] of [
    ['ch', 'cloud-hypervisor'],
    ['fc', 'firecracker'],
  ] as const) {
    const e = errorOf(await c.call('vm.snapshot', { vm, name: `snap-${vm}` }));
    assert.equal(e.code, 'CAPABILITY_UNSUPPORTED');
    assert.deepEqual(e.details, { backend, capability: 'forks' });
    const t0 = performance.now();
    assert.equal(result(await c.call('vm.suspend', { vm })).state, 'suspended');
    // The fakes save a few KiB: seconds here would be a wait on something that never comes.
    assert.ok(
      performance.now() - t0 < 5000,
      `suspend took ${Math.round(performance.now() - t0)} ms`,
    );
    result(await c.call('vm.start', { vm }));
    const r = result(await c.call('job.run', { vm, argv: ['echo', 'back'], wait: true }));
    assert.equal(r.stdout, 'back\n');
    const got = result(await c.call('vm.get', { vm }));
    assert.equal(got.restore?.snapshot, 'suspend');
  }
});

test('a backend whose program is missing: BACKEND_UNAVAILABLE with the reason', async () => {
  result(await c.call('vm.create', { name: 'nope', backend: 'missing' }));
  const e = errorOf(await c.call('vm.start', { vm: 'nope' }));
  assert.equal(e.code, 'BACKEND_UNAVAILABLE');
  assert.match(e.message, /not installed/);
});
