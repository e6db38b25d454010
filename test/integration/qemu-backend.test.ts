/**
 * The QEMU backend against real QEMU under TCG: a busybox test guest (see
 * test/support/qemu-guest.ts) boots, writes markers to the console and the
 * agent port, and is paused, resumed, rebooted, re-attached, powered down,
 * quit and killed. No fixed sleeps: every wait is on a marker, a QMP event or
 * the `exited` promise. Every QEMU is SIGKILLed in the after hook.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CID_FILE } from '../../host/hypervisors/qemu/vsock.js';
import { after, before, describe, it } from 'node:test';
import { MvirtError } from '../../protocol/errors.js';
import type { RunningVm, VmEvent } from '../../host/hypervisors/types.js';
import {
  AGENT_MARKER,
  CONSOLE_MARKER,
  prepareTestGuest,
  type TestGuest,
} from '../support/qemu-guest.js';
import {
  killLaunched,
  launchTracked,
  quietLog,
  stillRunning,
  streamReader,
  testBackend,
  testSpec,
  within,
} from '../support/qemu-vm.js';

const BOOT_MS = 240_000; // TCG on a busy 2-core machine: boots took 15-40 s

let guest: TestGuest | null = null;

before(async () => {
  guest = await prepareTestGuest();
});

after(async () => {
  await killLaunched();
  await guest?.cleanup();
});

const needGuest = (): TestGuest => {
  if (!guest)
    throw new Error('no kernel for test guests (set MVIRT_TEST_KERNEL or allow apt-get download)');
  return guest;
};

describe('qemu backend: probe', () => {
  it('finds TCG working and KVM not (on these machines) within the timeouts', async () => {
    const backend = testBackend({ accel: 'auto', kvmProbeTimeoutMs: 3000 });
    const t0 = Date.now();
    const p = await backend.probe();
    const ms = Date.now() - t0;
    const d = await backend.probeDetails();
    assert.equal(d.tcg.available, true, d.tcg.reason);
    assert.equal(p.available, true);
    if (process.env.MVIRT_TEST_KVM_WORKS === '1') {
      assert.equal(p.accel, 'kvm');
    } else {
      assert.equal(d.kvm.available, false);
      assert.equal(p.accel, 'tcg');
    }
    assert.ok(ms < 3000 + 15_000, `probe took ${ms} ms`);
    // Cached: the second call does not run QEMU again.
    assert.equal(await backend.probeDetails(), d);
    console.log(`# probe: ${ms} ms, kvm=${JSON.stringify(d.kvm)} tcg=${JSON.stringify(d.tcg)}`);
  });
});

describe('qemu backend: launch failures', () => {
  it('throws BOOT_FAILED with the tail of qemu.log when QEMU exits during launch', async () => {
    const g = needGuest();
    const backend = testBackend();
    const spec = testSpec(g, { kernel: '/nonexistent/vmlinuz' });
    await assert.rejects(backend.launch(spec, quietLog()), (err: unknown) => {
      assert.ok(err instanceof MvirtError);
      assert.equal(err.code, 'BOOT_FAILED');
      assert.match(err.message, /nonexistent\/vmlinuz/);
      return true;
    });
  });

  it('vsock: the confined QEMU gets the device mvirtd opened and its CID; a failed launch frees the CID', async () => {
    // No /dev/vhost-vsock here: a plain file stands in, so QEMU (its own uid,
    // seccomp on) takes the inherited fd and the CID as far as the vhost ioctl.
    const g = needGuest();
    const dev = path.join(g.workDir, 'vhost-vsock');
    await writeFile(dev, '');
    const backend = testBackend({
      vsockDir: path.join(g.workDir, 'vsock'),
      helperCacheDir: path.join(g.workDir, 'helpers'),
      vhostVsockDevice: dev,
    });
    assert.equal(backend.capabilities.channels[0], 'vsock');
    // Twice: the first launch's CID is free again for the second.
    for (let i = 0; i < 2; i++) {
      const spec = testSpec(g, { channel: 'vsock' });
      await assert.rejects(backend.launch(spec, quietLog()), (err: unknown) => {
        assert.ok(err instanceof MvirtError);
        assert.equal(err.code, 'BOOT_FAILED');
        assert.match(err.message, /vhost-vsock-pci,guest-cid=3,vhostfd=3: vhost_set_owner failed/);
        return true;
      });
      assert.equal(existsSync(path.join(spec.dir, CID_FILE)), false, 'the CID is free again');
      assert.deepEqual(readdirSync(path.join(g.workDir, 'vsock')), [], 'its socket is gone');
    }
  });
});

describe('qemu backend: a VM life', { timeout: 15 * 60_000 }, () => {
  let vm: RunningVm;
  const events: VmEvent[] = [];
  let consoleReader: ReturnType<typeof streamReader>;
  let spec: ReturnType<typeof testSpec>;

  it('boots: markers on the console and the agent port', async () => {
    const g = needGuest();
    spec = testSpec(g);
    const t0 = Date.now();
    vm = await launchTracked(testBackend(), spec);
    const launchedMs = Date.now() - t0;
    vm.onEvent?.((e) => events.push(e));
    consoleReader = streamReader(await vm.connectConsole());
    await consoleReader.waitFor(CONSOLE_MARKER, 1, BOOT_MS);
    const consoleMs = Date.now() - t0;
    const agent = await vm.connectAgent();
    const agentReader = streamReader(agent);
    await agentReader.waitFor(AGENT_MARKER, 1, BOOT_MS);
    const agentMs = Date.now() - t0;
    // Host → guest over this port is exercised with the real agent (MQTT both
    // ways) in agent-vm.test.ts; this busybox guest only proves guest → host.
    agent.destroy();
    const uptime = /CONSOLE-UP uptime=([\d.]+)/.exec(consoleReader.text)?.[1];
    console.log(
      `# boot: QMP ready ${launchedMs} ms, console marker ${consoleMs} ms (guest uptime ${uptime} s), agent marker ${agentMs} ms`,
    );
    assert.equal(await vm.status(), 'running');
    assert.equal(vm.runtime.accel, 'tcg');
  });

  it('pauses and resumes', async () => {
    await vm.pause();
    assert.equal(await vm.status(), 'paused');
    await vm.resume();
    assert.equal(await vm.status(), 'running');
    assert.ok(events.some((e) => e.type === 'paused'));
    assert.ok(events.some((e) => e.type === 'resumed'));
  });

  it('reboots: the console marker appears a second time', async () => {
    await vm.reboot();
    await consoleReader.waitFor(CONSOLE_MARKER, 2, BOOT_MS);
    assert.ok(events.some((e) => e.type === 'reset' && !e.guest));
  });

  it('keeps console.log (bounded)', async () => {
    const st = await stat(`${spec.dir}/console.log`);
    assert.ok(st.size > 0 && st.size <= spec.consoleLogBytes);
  });

  it('re-attaches from a fresh backend after detach (daemon restart); refuses wrong start time or folder', async () => {
    const runtime = vm.runtime;
    await vm.detach();
    assert.ok(stillRunning(runtime.pid, runtime.startTime), 'detach must not touch the VM');

    const fresh = testBackend();
    await assert.rejects(
      fresh.attach({ ...runtime, startTime: runtime.startTime + 1 }, spec.dir, quietLog()),
      (err: unknown) =>
        err instanceof MvirtError && (err.details as { reason: string }).reason === 'pid-reused',
    );
    await assert.rejects(
      fresh.attach(runtime, `${spec.dir}-elsewhere`, quietLog()),
      (err: unknown) =>
        err instanceof MvirtError && (err.details as { reason: string }).reason === 'not-ours',
    );
    await assert.rejects(
      fresh.attach({ ...runtime, pid: 999_999_999 }, spec.dir, quietLog()),
      (err: unknown) =>
        err instanceof MvirtError && (err.details as { reason: string }).reason === 'gone',
    );

    vm = await fresh.attach(runtime, spec.dir, quietLog());
    assert.equal(await vm.status(), 'running');
    // The console works again: type into it, read the echo.
    const con = await vm.connectConsole();
    const r = streamReader(con);
    con.write('mark-after-attach\n');
    await r.waitFor('echo:mark-after-attach', 1, 60_000);
    // The agent channel's socket accepts a new host end too (the real agent
    // reconnecting after a daemon restart is daemon-qemu.test.ts' recovery test).
    const agent = await vm.connectAgent();
    assert.equal(agent.destroyed, false);
    agent.destroy();
  });

  it('delivers an ACPI powerdown; a guest power-off ends the adopted process with its reason', async () => {
    const seen = (type: VmEvent['type']) =>
      new Promise<VmEvent>((resolve) =>
        vm.onEvent?.((e) => {
          if (e.type === type) resolve(e);
        }),
      );
    // The backend's job is to deliver the request: QEMU confirms with POWERDOWN.
    // Whether a guest obeys ACPI is the guest's business (the µOS stops through
    // its agent), so the power-off itself is asked for on the console.
    const powerdown = seen('powerdown');
    await vm.powerdown();
    await within(powerdown, 30_000, 'POWERDOWN event');
    const shutdown = seen('shutdown');
    const con = await vm.connectConsole();
    con.write('poweroff\n');
    const ev = await within(shutdown, 120_000, 'SHUTDOWN event');
    assert.equal(ev.type === 'shutdown' && ev.reason, 'guest-shutdown');
    const info = await within(vm.exited, 5000, 'exited after shutdown');
    assert.match(info.reason, /guest-shutdown/);
  });
});

describe('qemu backend: process death', { timeout: 10 * 60_000 }, () => {
  it('notices an own child killed from outside within a second', async () => {
    const vm = await launchTracked(testBackend(), testSpec(needGuest()));
    const t0 = Date.now();
    process.kill(vm.runtime.pid, 'SIGKILL');
    const info = await within(vm.exited, 1000, 'exited');
    assert.equal(info.signal, 'SIGKILL');
    console.log(`# own child death noticed after ${Date.now() - t0} ms`);
  });

  it('notices an adopted process killed from outside within a second', async () => {
    const g = needGuest();
    const spec = testSpec(g);
    const first = await launchTracked(testBackend(), spec);
    await first.detach();
    const vm = await testBackend().attach(first.runtime, spec.dir, quietLog());
    const t0 = Date.now();
    process.kill(vm.runtime.pid, 'SIGKILL');
    const info = await within(vm.exited, 1000, 'exited (adopted)');
    assert.equal(info.code, null);
    console.log(`# adopted death noticed after ${Date.now() - t0} ms`);
  });

  it('quit stops QEMU at once', async () => {
    const vm = await launchTracked(testBackend(), testSpec(needGuest()));
    await vm.quit?.();
    const info = await within(vm.exited, 10_000, 'exited after quit');
    assert.equal(info.code, 0);
    assert.match(info.reason, /host-qmp-quit/);
    await assert.rejects(
      vm.pause(),
      (err: unknown) => err instanceof MvirtError && err.code === 'VM_BAD_STATE',
    );
  });
});
