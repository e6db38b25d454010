/**
 * The confined hypervisor against real QEMU under TCG (the busybox test
 * guest of test/support/qemu-guest.ts): two running VMs, each QEMU checked
 * through /proc and the cgroup tree — its own unprivileged uid, no
 * capabilities, no_new_privs, `Seccomp: 2`, an empty environment, only the
 * expected open files, its own cgroup with the expected memory, cpu and pids
 * limits — and denied what belongs to the other VM. The cgroup is gone once
 * the VM ends. Needs root (the tests run as root); every QEMU is SIGKILLed in
 * the after hook.
 */
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { memoryLimitBytes, QEMU_PIDS_MAX } from '../../host/hypervisors/qemu/confine.js';
import type { LaunchSpec, RunningVm } from '../../host/hypervisors/types.js';
import { cgroupFacts, procFacts, readAs } from '../support/confinement.js';
import { AGENT_MARKER, prepareTestGuest, type TestGuest } from '../support/qemu-guest.js';
import {
  killLaunched,
  launchTracked,
  streamReader,
  testBackend,
  testSpec,
  within,
} from '../support/qemu-vm.js';

const BOOT_MS = 240_000; // TCG on a busy 2-core machine
const TB_MIB = 128; // the backend's default TCG translation cache

let guest: TestGuest | null = null;
before(async () => {
  guest = await prepareTestGuest();
});
after(async () => {
  await killLaunched();
  await guest?.cleanup();
});

describe('qemu backend: a confined hypervisor', { timeout: 15 * 60_000 }, () => {
  const backend = testBackend();
  let a: { vm: RunningVm; spec: LaunchSpec } | null = null;
  let b: { vm: RunningVm; spec: LaunchSpec } | null = null;

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'these tests run as root (as mvirtd does when bridging)');
    const g = guest!;
    const boot = async (over: Partial<LaunchSpec>) => {
      const spec = testSpec(g, over);
      const vm = await launchTracked(backend, spec);
      const agent = streamReader(await vm.connectAgent());
      await agent.waitFor(AGENT_MARKER, 1, BOOT_MS);
      return { vm, spec };
    };
    a = await boot({ vcpus: 1, memoryMiB: 256 });
    b = await boot({ vcpus: 2, memoryMiB: 192 });
  });

  it('reports itself confined', () => {
    assert.equal(backend.confinement.user, true, backend.confinement.reasons.join('; '));
    assert.notEqual(backend.confinement.cgroup, null, backend.confinement.reasons.join('; '));
    assert.equal(backend.confinement.seccomp, true);
    assert.deepEqual(backend.confinement.reasons, []);
  });

  it('runs each QEMU as its own unprivileged user, owner of its folder only', () => {
    const fa = procFacts(a!.vm.runtime.pid);
    const fb = procFacts(b!.vm.runtime.pid);
    const uidA = fa.uids[0]!;
    for (const f of [fa, fb]) {
      assert.equal(new Set(f.uids).size, 1, `real, effective, saved, fs uid alike: ${f.uids}`);
      assert.notEqual(f.uids[0], 0);
      assert.notEqual(f.uids[0], process.getuid?.());
      assert.deepEqual(f.groups, [], 'no supplementary groups');
      assert.equal(f.capEff, '0000000000000000');
      assert.equal(f.capPrm, '0000000000000000');
      assert.equal(f.capBnd, '0000000000000000', 'bounding set emptied');
      assert.equal(f.noNewPrivs, '1');
    }
    assert.notEqual(fb.uids[0], uidA, 'one uid per VM');
    const st = statSync(a!.spec.dir);
    assert.equal(st.uid, uidA, 'the VM folder belongs to its QEMU');
    assert.equal(st.mode & 0o777, 0o700);
  });

  it('runs QEMU under seccomp (Seccomp: 2) with an empty environment', () => {
    for (const x of [a!, b!]) {
      const f = procFacts(x.vm.runtime.pid);
      assert.equal(f.seccomp, '2', 'seccomp filter mode');
      assert.equal(f.environ, '', 'no environment variable inherited');
    }
  });

  it('leaves QEMU only the files it needs open', () => {
    const f = procFacts(a!.vm.runtime.pid);
    const dir = a!.spec.dir;
    const unexpected = f.fds.filter(
      (t) =>
        !(
          t === '/dev/null' ||
          t === '/dev/urandom' ||
          t.startsWith(dir + path.sep) ||
          /^(socket|pipe|anon_inode):/.test(t)
        ),
    );
    assert.deepEqual(unexpected, [], `open files: ${f.fds.join(', ')}`);
    assert.ok(f.fds.includes(path.join(dir, 'qemu.log')), 'stdout/stderr go to qemu.log');
  });

  it('puts each QEMU in its own cgroup with cpu, memory and pids limits', () => {
    const ca = cgroupFacts(a!.vm.runtime.pid);
    const cb = cgroupFacts(b!.vm.runtime.pid);
    assert.equal(ca.version, backend.confinement.cgroup);
    assert.notEqual(ca.memoryDir, cb.memoryDir, 'one cgroup per VM');
    assert.equal(path.basename(ca.memoryDir), a!.spec.vmId);
    assert.equal(ca.memoryMax, memoryLimitBytes(256, TB_MIB));
    assert.equal(cb.memoryMax, memoryLimitBytes(192, TB_MIB));
    assert.equal(ca.cpuQuotaUs / ca.cpuPeriodUs, 1, 'one vCPU: one CPU');
    assert.equal(cb.cpuQuotaUs / cb.cpuPeriodUs, 2, 'two vCPUs: two CPUs');
    assert.equal(ca.pidsMax, QEMU_PIDS_MAX);
    assert.equal(cb.pidsMax, QEMU_PIDS_MAX);
  });

  it("denies a VM's user the other VM's folder", async () => {
    const uidA = procFacts(a!.vm.runtime.pid).uids[0]!;
    const own = await readAs(uidA, path.join(a!.spec.dir, 'qemu.log'));
    assert.equal(own, null, 'its own log is readable');
    const other = await readAs(uidA, path.join(b!.spec.dir, 'qemu.log'));
    assert.match(other ?? 'read it', /Permission denied/);
  });

  it('removes the cgroup when the VM ends', async () => {
    const dir = cgroupFacts(b!.vm.runtime.pid).memoryDir;
    assert.ok(existsSync(dir));
    await b!.vm.quit!();
    await within(b!.vm.exited, 60_000, 'QEMU exit');
    // release() runs on `exited`; the next turn of the loop sees it done.
    await within(
      new Promise<void>((resolve) => {
        const check = () => (existsSync(dir) ? setImmediate(check) : resolve());
        check();
      }),
      5000,
      'cgroup removal',
    );
  });
});
