/**
 * One conformance suite for every hypervisor backend (the cases are in
 * backend-cases.ts): lifecycle, pause/resume, reboot, hot-plug and snapshots
 * where the backend declares them (and CAPABILITY_UNSUPPORTED where it does
 * not), the kernel formats it boots, the console, re-attach after the daemon
 * is gone, and the VMM's death noticed. The agent's first bytes on its
 * channel (an MQTT CONNECT naming the VM) are how a test knows the guest is
 * up. A fake VMM's requests are checked against the official API spec; any
 * violation fails the test (afterEach).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, afterEach, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { MvirtError } from '../../protocol/errors.js';
import { requireCapability } from '../../host/hypervisors/index.js';
import type { Hypervisor, LaunchSpec, RunningVm, VmEvent } from '../../host/hypervisors/types.js';
import type { BackendCase } from './backend-cases.js';
import { fakeElfKernel, gzipBzImage } from '../../harness/kernels.js';

const log = pino({ level: process.env.MVIRT_TEST_LOG ? 'debug' : 'silent' });
const MQTT_CONNECT = 0x10;

/** Until `vmId` shows in what `s` says after this call: the agent's MQTT CONNECT naming the VM. */
async function connectOn(s: Duplex, vmId: string): Promise<void> {
  let got = Buffer.alloc(0);
  while (!got.includes(vmId)) {
    const [chunk] = (await once(s, 'data')) as [Buffer];
    got = Buffer.concat([got, chunk]);
  }
  const at = got.indexOf(MQTT_CONNECT);
  assert.ok(at >= 0 && at < got.indexOf(vmId), 'the agent speaks MQTT: a CONNECT naming the VM');
}

/** The agent's first bytes on its channel: an MQTT CONNECT naming the VM. */
async function agentConnect(vm: RunningVm, vmId: string): Promise<Duplex> {
  const s = await vm.connectAgent();
  await connectOn(s, vmId);
  return s;
}

/**
 * Types `line` on the console until it comes back: a fake's console echoes at
 * once, a real guest's shell only once it is up (what is typed before is lost).
 */
async function consoleEchoes(c: Duplex, line: string): Promise<void> {
  let got = '';
  const seen = new Promise<void>((resolve) => {
    const on = (chunk: Buffer): void => {
      got += chunk.toString('utf8');
      if (got.includes(line)) {
        c.off('data', on);
        resolve();
      }
    };
    c.on('data', on);
  });
  c.write(`${line}\n`);
  // Typed again each second until echoed; not a fixed wait: the echo ends it.
  const again = setInterval(() => c.write(`${line}\n`), 1000);
  try {
    await seen;
  } finally {
    clearInterval(again);
  }
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<MvirtError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof MvirtError, String(err));
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/** The suite for one backend (a describe block). */
export function backendConformance(bc: BackendCase): void {
  describe(`backend conformance: ${bc.name}`, { timeout: bc.suiteTimeoutMs }, () => {
    let root: string;
    let kvm: string;
    let hv: Hypervisor;
    const dirs: string[] = [];
    const vms: RunningVm[] = [];
    let n = 0;
    let files: NonNullable<ReturnType<NonNullable<BackendCase['bootFiles']>>>;

    before(() => {
      // Short: the VM folders hold unix sockets (108-byte sun_path).
      root = mkdtempSync(path.join(os.tmpdir(), 'mvb-'));
      // A confined QEMU runs as a user of its own, which must reach its VM's folder.
      chmodSync(root, 0o755);
      kvm = path.join(root, 'kvm');
      writeFileSync(kvm, '');
      for (const f of ['initrd', 'root.img']) writeFileSync(path.join(root, f), 'x');
      // What cloud-hypervisor and Firecracker load: an ELF with the PVH note (the fakes check it).
      writeFileSync(path.join(root, 'vmlinux'), fakeElfKernel());
      files = bc.bootFiles?.() ?? {
        kernel: path.join(root, 'vmlinux'),
        initrd: path.join(root, 'initrd'),
        disk: path.join(root, 'root.img'),
        cmdline: 'console=ttyS0 quiet',
      };
      hv = bc.make(log, { kvmPath: kvm });
    });
    afterEach(async () => {
      const hold = setInterval(() => undefined, 1000);
      for (const vm of vms.splice(0)) {
        vm.signal('SIGKILL');
        await vm.exited;
        // The fake VMM's guest (its agent child) is in the VMM's process group;
        // a guest stopped by a pause does not notice its VMM's death by itself.
        try {
          process.kill(-vm.runtime.pid, 'SIGKILL');
        } catch {
          // the group is gone already
        }
      }
      clearInterval(hold);
      for (const d of dirs.splice(0))
        assert.deepEqual(bc.violations(d), [], 'requests outside the spec');
    });
    after(() => rmSync(root, { recursive: true, force: true }));

    const specFor = (over: Partial<LaunchSpec> = {}): LaunchSpec => {
      const vmId = `vm${++n}`;
      const dir = path.join(root, 'vm', vmId);
      dirs.push(dir);
      return {
        vmId,
        vcpus: 1,
        memoryMiB: 128,
        kernel: files.kernel,
        initrd: files.initrd,
        cmdline: files.cmdline,
        disks: [{ path: files.disk, readOnly: true }],
        dir,
        channel: hv.capabilities.channels[0]!,
        agentArgs: { 'mvirt.root': 'mvirt/test' },
        network: { mode: 'none' },
        consoleLogBytes: 65536,
        ...over,
      };
    };
    const launch = async (spec: LaunchSpec) => {
      const vm = await hv.launch(spec, log);
      vms.push(vm);
      return vm;
    };

    it('probes as available with the program there, and says what is missing otherwise', async () => {
      const p = await hv.probe();
      assert.equal(p.available, true, p.reason);
      assert.equal(p.accel, bc.probe.accel);
      assert.match(p.version ?? '', bc.probe.version);
      const noBin = bc.make(log, { kvmPath: kvm, binary: path.join(root, 'nowhere', bc.name) });
      const nb = await noBin.probe();
      assert.equal(nb.available, false);
      assert.match(nb.reason ?? '', bc.probe.noBinary);
      const e = await rejectsWith(noBin.launch(specFor(), log), 'BACKEND_UNAVAILABLE');
      assert.match(e.message, bc.probe.noBinary);
      if (!bc.probe.needsKvm) return; // it runs without KVM (QEMU's TCG): no KVM to miss
      assert.equal((e.details as { missing?: string } | undefined)?.missing, 'binary');
      const noKvm = bc.make(log, { kvmPath: path.join(root, 'no-kvm') });
      const nk = await noKvm.probe();
      assert.equal(nk.available, false);
      assert.match(nk.reason ?? '', /needs KVM/);
      const e2 = await rejectsWith(noKvm.launch(specFor(), log), 'BACKEND_UNAVAILABLE');
      assert.equal((e2.details as { missing?: string } | undefined)?.missing, 'kvm');
    });

    it('boots, the agent dials home over the hybrid vsock, the console echoes, a power-down ends it', async () => {
      const spec = specFor();
      const vm = await launch(spec);
      assert.equal(vm.runtime.backend, hv.name);
      assert.equal(await vm.status(), 'running');
      const agent = await agentConnect(vm, spec.vmId);
      const con = await vm.connectConsole();
      await consoleEchoes(con, 'echo-me');
      requireCapability(hv, 'gracefulShutdown');
      await vm.powerdown();
      const exit = await vm.exited;
      assert.equal(exit.code, 0, exit.reason);
      agent.destroy();
      con.destroy();
      await rejectsWith(vm.pause(), 'VM_BAD_STATE');
    });

    it('boots only the kernel formats it declares', async () => {
      if (hv.capabilities.kernelFormats.includes('bzImage')) return;
      // mvirtd hands such a backend the ELF it derives (images/vmlinux.ts);
      // the VMM itself refuses a bzImage, and so do the fakes.
      const bz = path.join(root, 'bzImage');
      writeFileSync(bz, gzipBzImage(fakeElfKernel()));
      await assert.rejects(launch(specFor({ kernel: bz })), /not an ELF file/);
    });

    it('pauses and resumes', async () => {
      requireCapability(hv, 'pause');
      const vm = await launch(specFor());
      await vm.pause();
      assert.equal(await vm.status(), 'paused');
      await vm.resume();
      assert.equal(await vm.status(), 'running');
    });

    it('reboots where it says so, and is refused with CAPABILITY_UNSUPPORTED naming it where not', async () => {
      const spec = specFor();
      const vm = await launch(spec);
      const first = await agentConnect(vm, spec.vmId);
      if (!hv.capabilities.reboot) {
        assert.throws(
          () => requireCapability(hv, 'reboot'),
          (e: MvirtError) =>
            e.code === 'CAPABILITY_UNSUPPORTED' &&
            (e.details as { backend?: string }).backend === hv.name,
        );
        await rejectsWith(vm.reboot(), 'CAPABILITY_UNSUPPORTED');
        return;
      }
      const events: VmEvent[] = [];
      vm.onEvent?.((e) => events.push(e));
      const closed = once(first, 'close');
      await vm.reboot();
      if (spec.channel === 'virtio-serial') {
        // One host stream across boots: the reset, then the new boot's agent on the same stream.
        assert.ok(
          events.some((e) => e.type === 'reset'),
          'a reset event',
        );
        await connectOn(first, spec.vmId);
        first.destroy();
      } else {
        await closed; // a stream per boot: the old guest's agent is gone with it
        (await agentConnect(vm, spec.vmId)).destroy();
      }
      assert.equal(await vm.status(), 'running');
    });

    it('hot-plugs disks where it says so', async () => {
      const spec = specFor();
      const vm = await launch(spec);
      if (!hv.capabilities.hotplugDisks) {
        assert.equal(vm.hotplug, undefined);
        assert.throws(() => requireCapability(hv, 'hotplugDisks'), /cannot add or remove disks/);
        return;
      }
      // In the VM's folder, where mvirtd links a volume before handing it over.
      const vol = path.join(spec.dir, 'vol.img');
      writeFileSync(vol, Buffer.alloc(1 << 20));
      const disk = {
        path: vol,
        readOnly: false,
        serial: 'v123',
        format: 'raw' as const,
      };
      const h = vm.hotplug!;
      await h.handOver(disk);
      await h.addBackend(disk);
      // The VMM's own list, where the case can read it beside the backend
      // (QEMU's one QMP connection is the backend's: there plug and unplug answering is the check).
      const has = async (): Promise<boolean> =>
        (await bc.diskIds!(spec.dir)).some((id) => id.includes('v123'));
      // A guest that is up answers the unplug (ACPI); a fake has nothing to wait for.
      if (bc.real) (await agentConnect(vm, spec.vmId)).destroy();
      await h.plug(disk);
      if (bc.diskIds) assert.ok(await has());
      await rejectsWith(h.plug(disk), 'HYPERVISOR_ERROR'); // same id twice: 409
      await h.unplug('v123', bc.unplugMs ?? 5000);
      await h.removeBackend('v123');
      if (bc.diskIds) assert.ok(!(await has()));
      await h.unplug('v123', bc.unplugMs ?? 5000); // gone already: no error
    });

    it('saves its state and resumes a new VM from it where it says so', async () => {
      const spec = specFor();
      const vm = await launch(spec);
      if (!hv.capabilities.snapshots) {
        assert.equal(vm.saveState, undefined);
        return;
      }
      (await agentConnect(vm, spec.vmId)).destroy();
      const stateDir = path.join(root, `state-${spec.vmId}`);
      await mkdir(stateDir);
      const saved = await vm.saveState!(stateDir, spec);
      assert.equal(saved.backend, hv.name);
      assert.ok(saved.bytes > 0 && Object.keys(saved.files).length > 0);
      assert.equal(await vm.status(), 'paused');
      vm.signal('SIGKILL');
      await vm.exited;
      assert.equal(await hv.stateProblem!(saved, spec), null);
      assert.match((await hv.stateProblem!(saved, { ...spec, memoryMiB: 256 })) ?? '', /128 MiB/);

      // The VMM's side of a fork: the state resumes in another VM's folder
      // (whether the guest learns who it is then is the 'forks' capability).
      let checked = false;
      const fork = specFor();
      const restored = await launch({
        ...fork,
        restore: {
          dir: stateDir,
          state: saved,
          check: Promise.resolve().then(() => void (checked = true)),
        },
      });
      assert.ok(checked);
      assert.equal(await restored.status(), 'running');
      (await agentConnect(restored, spec.vmId)).destroy();
      await rejectsWith(
        hv.launch({ ...specFor(), vcpus: 2, restore: { dir: stateDir, state: saved } }, log),
        'SNAPSHOT_INCOMPATIBLE',
      );
    });

    it('is adopted again by a new daemon and keeps working; a leftover it does not adopt is ended', async () => {
      // Detached and adopted VMMs are not this process's children, and their
      // watchers do not hold the event loop (a daemon has its own handles): this does.
      const hold = setInterval(() => undefined, 1000);
      try {
        await adoption();
      } finally {
        clearInterval(hold);
      }
    });

    async function adoption(): Promise<void> {
      const spec = specFor();
      const vm = await launch(spec);
      const first = await agentConnect(vm, spec.vmId);
      // The daemon goes away: its sockets close, the VMM runs on.
      first.destroy();
      await vm.detach();
      const rt = vm.runtime;
      const hv2 = bc.make(log, { kvmPath: kvm });
      assert.equal(hv2.identify(rt, spec.dir), 'ours');
      assert.equal(hv2.identify(rt, path.join(root, 'elsewhere')), 'not-ours');
      assert.equal(hv2.identify({ ...rt, startTime: rt.startTime + 1 }, spec.dir), 'pid-reused');
      const adopted = await hv2.attach(rt, spec.dir, log);
      vms.push(adopted);
      assert.equal(await adopted.status(), 'running');
      // The guest's agent redials the new daemon's listener.
      (await agentConnect(adopted, spec.vmId)).destroy();
      await adopted.pause();
      await adopted.resume();
      // Its death is noticed without a child to wait for.
      process.kill(rt.pid, 'SIGKILL');
      const exit = await adopted.exited;
      assert.match(exit.reason, /adopted/);
      assert.equal(hv2.identify(rt, spec.dir), 'gone');
      await assert.rejects(
        hv2.attach(rt, spec.dir, log),
        (e: MvirtError) => (e.details as { reason?: string }).reason === 'gone',
      );

      // A leftover not re-adopted, and one no record names: both ended.
      const spec2 = specFor();
      const left = await launch(spec2);
      await left.detach();
      await hv2.dispose(left.runtime, spec2.dir, log);
      const spec3 = specFor();
      const orphan = await launch(spec3);
      await orphan.detach();
      const ended = await hv2.disposeOrphans!(path.join(root, 'vm'), new Set(), log);
      assert.deepEqual(ended, [orphan.runtime.pid]);
      await Promise.all([left.exited, orphan.exited]);
    }

    it('notices the death of the VMM process it launched', async () => {
      const vm = await launch(specFor());
      process.kill(vm.runtime.pid, 'SIGKILL');
      const exit = await vm.exited;
      assert.equal(exit.signal, 'SIGKILL');
      assert.equal(await vm.status(), 'shutdown');
    });
  });
}
