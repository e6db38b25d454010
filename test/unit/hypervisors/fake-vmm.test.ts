/**
 * The fake VMMs themselves: they must be strict where the real ones are, or
 * the conformance suite proves nothing. A request outside the official spec
 * is refused and recorded; the state machines refuse what the real VMMs
 * refuse; the hybrid vsock answers `CONNECT <port>` as the real ones do.
 * Also, per backend: the capability map never claims an agent channel the
 * launch would refuse (and the launch refuses the ones it does not claim).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { CHANNELS } from '../../../protocol/agent.js';
import type { MvirtError } from '../../../protocol/errors.js';
import { createRestClient, waitForApi, type RestClient } from '../../../host/hypervisors/rest.js';
import type { LaunchSpec } from '../../../host/hypervisors/types.js';
import { ECHO_PORT, VIOLATIONS_FILE } from '../../../harness/fake-vmm/common.js';
import { BACKEND_CASES, fakeVmmBinary } from '../../support/backend-cases.js';
import { readFileSync, existsSync } from 'node:fs';
import { fakeElfKernel } from '../../../harness/kernels.js';

const log = pino({ level: 'silent' });
let root: string;
before(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'mvf-'));
  for (const f of ['initrd', 'root.img']) writeFileSync(path.join(root, f), 'x');
  // The VMMs load an x86-64 ELF with a PVH entry (the fakes refuse anything else).
  writeFileSync(path.join(root, 'vmlinuz'), fakeElfKernel());
});
after(() => rmSync(root, { recursive: true, force: true }));

async function startFake(
  name: 'cloud-hypervisor' | 'firecracker',
  dir: string,
): Promise<{ api: RestClient; child: ChildProcess; violations(): string[] }> {
  mkdirSync(dir, { recursive: true });
  const args =
    name === 'firecracker' ? ['--api-sock', 'api.sock'] : ['--api-socket', 'path=api.sock'];
  const child = spawn(fakeVmmBinary(name), args, { cwd: dir, stdio: ['pipe', 'pipe', 'inherit'] });
  await waitForApi(path.join(dir, 'api.sock'), 20_000);
  const api = createRestClient({
    socketPath: path.join(dir, 'api.sock'),
    base: name === 'cloud-hypervisor' ? '/api/v1' : '',
    name,
  });
  const violations = () => {
    const f = path.join(dir, VIOLATIONS_FILE);
    return existsSync(f) ? readFileSync(f, 'utf8').split('\n').filter(Boolean) : [];
  };
  return { api, child, violations };
}

async function stop(f: { api: RestClient; child: ChildProcess }): Promise<void> {
  f.api.close();
  const gone = once(f.child, 'exit');
  f.child.kill('SIGKILL');
  await gone;
}

describe('fake cloud-hypervisor', () => {
  it('refuses and records requests outside the spec, and keeps the state machine', async () => {
    const dir = path.join(root, 'ch1');
    const f = await startFake('cloud-hypervisor', dir);
    try {
      // Not in the spec at all; a field the spec does not name; a wrong method.
      assert.equal((await f.api.request('PUT', '/vm.teleport')).status, 400);
      const bad = await f.api.request('PUT', '/vm.create', { payload: { kernel: 'k', kernal: 1 } });
      assert.equal(bad.status, 400);
      assert.match(String(bad.body), /kernal/);
      assert.equal((await f.api.request('GET', '/vm.boot')).status, 400);
      assert.equal(f.violations().length, 3);
      // State machine: nothing before vm.create; no resume of a running VM.
      assert.equal((await f.api.request('PUT', '/vm.boot')).status, 404);
      assert.equal((await f.api.request('GET', '/vm.info')).status, 404);
      await f.api.call('PUT', '/vm.create', {
        payload: { kernel: path.join(root, 'vmlinuz'), cmdline: 'console=ttyS0' },
        cpus: { boot_vcpus: 1, max_vcpus: 1 },
      });
      assert.equal((await f.api.request('PUT', '/vm.pause')).status, 405);
      assert.equal((await f.api.request('PUT', '/vm.create', { payload: {} })).status, 500);
      await f.api.call('PUT', '/vm.boot');
      assert.equal((await f.api.request('PUT', '/vm.resume')).status, 405);
      assert.equal(
        (await f.api.request('PUT', '/vm.snapshot', { destination_url: `file://${dir}` })).status,
        405,
      );
      assert.equal(
        (await f.api.request('PUT', '/vm.restore', { source_url: `file://${dir}` })).status,
        404,
      );
      assert.equal(
        f.violations().length,
        3,
        'valid requests in the wrong state are no spec violation',
      );
    } finally {
      await stop(f);
    }
  });
});

describe('fake Firecracker', () => {
  it('refuses configuration after InstanceStart and a snapshot load after configuration', async () => {
    const dir = path.join(root, 'fc1');
    const f = await startFake('firecracker', dir);
    try {
      const drive = {
        drive_id: 'd0',
        path_on_host: path.join(root, 'root.img'),
        is_root_device: false,
      };
      assert.equal(
        (await f.api.request('PUT', '/drives/d0', { ...drive, read_only: true })).status,
        400,
      );
      assert.equal((await f.api.request('PUT', '/actions', { action_type: 'Reboot' })).status, 400);
      assert.equal(f.violations().length, 2);
      const noKernel = await f.api.request('PUT', '/actions', { action_type: 'InstanceStart' });
      assert.equal(noKernel.status, 400);
      assert.match(JSON.stringify(noKernel.body), /fault_message/);
      await f.api.call('PUT', '/boot-source', { kernel_image_path: path.join(root, 'vmlinuz') });
      await f.api.call('PUT', '/drives/d0', drive);
      assert.equal(
        (await f.api.request('PUT', '/snapshot/load', { snapshot_path: path.join(dir, 's') }))
          .status,
        400,
      );
      assert.equal((await f.api.request('PATCH', '/vm', { state: 'Paused' })).status, 400);
      await f.api.call('PUT', '/actions', { action_type: 'InstanceStart' });
      const late = await f.api.request('PUT', '/machine-config', {
        vcpu_count: 2,
        mem_size_mib: 256,
      });
      assert.equal(late.status, 400);
      assert.match(JSON.stringify(late.body), /after starting/);
      assert.equal((await f.api.request('PUT', '/drives/d0', drive)).status, 400);
      assert.equal(
        (await f.api.request('PUT', '/snapshot/create', { snapshot_path: 'a', mem_file_path: 'b' }))
          .status,
        400,
        'a running VM is not snapshotted',
      );
      assert.equal(((await f.api.call('GET', '/')) as { state: string }).state, 'Running');
      assert.equal(f.violations().length, 2);
    } finally {
      await stop(f);
    }
  });

  it('answers a host-initiated hybrid-vsock CONNECT with OK and the stream, and refuses unknown ports', async () => {
    const dir = path.join(root, 'fc2');
    const f = await startFake('firecracker', dir);
    try {
      await f.api.call('PUT', '/boot-source', { kernel_image_path: path.join(root, 'vmlinuz') });
      await f.api.call('PUT', '/vsock', { guest_cid: 3, uds_path: 'v.sock' });
      await f.api.call('PUT', '/actions', { action_type: 'InstanceStart' });
      const s = net.createConnection(path.join(dir, 'v.sock'));
      await once(s, 'connect');
      s.write(`CONNECT ${ECHO_PORT}\nping`);
      let got = '';
      while (!got.includes('ping')) got += String((await once(s, 'data'))[0]);
      assert.match(got, /^OK \d+\nping$/);
      s.destroy();
      const r = net.createConnection(path.join(dir, 'v.sock'));
      await once(r, 'connect');
      r.write('CONNECT 9\n');
      await once(r, 'close');
    } finally {
      await stop(f);
    }
  });
});

for (const bc of BACKEND_CASES) {
  describe(`${bc.name}: capability map against the launch`, () => {
    it('launches with every agent channel it claims and refuses every other one', async () => {
      const kvm = path.join(root, 'kvm');
      writeFileSync(kvm, '');
      const hv = bc.make(log, { kvmPath: kvm });
      let n = 0;
      const spec = (channel: (typeof CHANNELS)[number]): LaunchSpec => ({
        vmId: `c${++n}`,
        vcpus: 1,
        memoryMiB: 128,
        kernel: path.join(root, 'vmlinuz'),
        initrd: path.join(root, 'initrd'),
        cmdline: '',
        disks: [{ path: path.join(root, 'root.img'), readOnly: true }],
        dir: path.join(root, `${bc.name}-${n + 1}`),
        channel,
        agentArgs: { 'mvirt.root': 'mvirt/test' },
        // tcp needs the guest's network: a bridged NIC (the fake needs no real TAP).
        network:
          channel === 'tcp'
            ? { mode: 'bridge', tap: 'mvtap0', mac: '52:54:00:00:00:01' }
            : { mode: 'none' },
        consoleLogBytes: 4096,
      });
      assert.ok(hv.capabilities.channels.length > 0);
      for (const ch of CHANNELS) {
        const s = spec(ch);
        if (hv.capabilities.channels.includes(ch)) {
          const vm = await hv.launch(s, log);
          vm.signal('SIGKILL');
          await vm.exited;
          assert.deepEqual(bc.violations(s.dir), []);
        } else {
          await assert.rejects(
            hv.launch(s, log),
            (e: MvirtError) =>
              e.code === 'CAPABILITY_UNSUPPORTED' &&
              (e.details as { backend?: string }).backend === hv.name,
          );
        }
      }
    });
  });
}
