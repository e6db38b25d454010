/**
 * vm.suspend and the resume of vm.start, in a real microVM under QEMU (TCG)
 * through mvirtd: a counter process and a tmpfs file live in guest memory;
 * the VM is suspended (its QEMU ends, its state stays in its folder) and
 * started again without booting, over and over with a job between each: the
 * counter goes on, the file is there, the boot count stays one. A resume that
 * fails (a state file changed behind mvirtd's back) leaves the VM suspended
 * and its state file intact; vm.stop of a suspended VM drops the state and
 * the next start boots.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import type { RpcClient } from '../../harness/client.js';
import { stopProcess } from '../../harness/daemon.js';
import {
  BOOT_MS,
  explained,
  ok,
  defaultRamDir,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const CYCLES = Number(process.env.MVIRT_SUSPEND_CYCLES ?? 100);
const JOB_MS = 120_000;

async function sh(c: RpcClient, vm: string, script: string): Promise<string> {
  const r = ok(
    await c.call('job.run', { vm, argv: ['sh', '-c', script], wait: true }, { timeoutMs: JOB_MS }),
  );
  assert.equal(r.exitCode, 0, r.stderr);
  return r.stdout ?? '';
}

test(
  `${CYCLES} suspend/resume cycles: the guest's memory goes on, nothing boots again`,
  { skip, timeout: 3_600_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-suspend-');
      const { c, d } = await qemuDaemon(dataDir);
      const vm = ok(await c.call('vm.create', { name: 's1', memoryMiB: 256 }));
      const booted = ok(
        await c.call('vm.start', { vm: 's1', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(booted.pid);
      // State that lives only in guest memory: a file in tmpfs and a counting process.
      await sh(
        c,
        's1',
        // The count is renamed into place: a `cat` between the truncate and the
        // write of `echo > count` read an empty file (CI saw it once in 100 cycles).
        'mkdir -p /run/t && echo kept-in-ram > /run/t/file; (i=0; while true; do i=$((i+1)); echo $i > /run/t/count.new; mv /run/t/count.new /run/t/count; sleep 0.05; done) </dev/null >/dev/null 2>&1 &',
      );
      const bootId = (await sh(c, 's1', 'cat /proc/sys/kernel/random/boot_id')).trim();
      let last = 0;
      const resumeMs: number[] = [];
      for (let i = 0; i < CYCLES; i++) {
        const s = ok(await c.call('vm.suspend', { vm: 's1' }, { timeoutMs: JOB_MS }));
        assert.equal(s.state, 'suspended', `cycle ${i}`);
        assert.equal(s.pid, undefined, 'no hypervisor process while suspended');
        const t0 = performance.now();
        const r = ok(
          await c.call('vm.start', { vm: 's1', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
        );
        resumeMs.push(performance.now() - t0);
        trackPid(r.pid);
        assert.equal(r.state, 'ready', `cycle ${i}`);
        assert.equal(r.restore?.snapshot, 'suspend');
        const out = await sh(
          c,
          's1',
          'cat /run/t/file /run/t/count /proc/sys/kernel/random/boot_id',
        );
        const [file, count, boot] = out.trim().split('\n');
        assert.equal(file, 'kept-in-ram');
        assert.equal(boot, bootId, 'the same boot: resumed, not booted');
        assert.ok(Number(count) > last, `the counter went on: ${count} after ${last}`);
        last = Number(count);
      }
      resumeMs.sort((a, b) => a - b);
      console.log(
        `# ${CYCLES} cycles: vm.start {wait} of a suspended VM median ${resumeMs[resumeMs.length >> 1]!.toFixed(0)} ms, max ${resumeMs.at(-1)!.toFixed(0)} ms`,
      );

      // A damaged state file: the resume fails, typed; the VM stays suspended, the file as it was.
      ok(await c.call('vm.suspend', { vm: 's1' }, { timeoutMs: JOB_MS }));
      const file = path.join(dataDir, 'vm', vm.id, 'suspend', 'state.bin');
      const size = (await stat(file)).size;
      const fh = await open(file, 'r+');
      await fh.write(Buffer.from('garbage'), 0, 7, Math.floor(size / 2));
      await fh.close();
      const bad = await c.call('vm.start', { vm: 's1', wait: true }, { timeoutMs: BOOT_MS });
      assert.equal(bad.ok, false);
      assert.equal(bad.ok ? '' : bad.error.code, 'SNAPSHOT_INVALID');
      const after = ok(await c.call('vm.get', { vm: 's1' }));
      assert.equal(after.state, 'suspended');
      assert.equal((await stat(file)).size, size, 'the saved state is kept');

      // vm.stop drops the saved state; the next start boots afresh.
      const stopped = ok(await c.call('vm.stop', { vm: 's1' }));
      assert.equal(stopped.state, 'stopped');
      assert.equal(existsSync(path.dirname(file)), false, 'the saved state is dropped');
      const cold = ok(
        await c.call('vm.start', { vm: 's1', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(cold.pid);
      assert.notEqual((await sh(c, 's1', 'cat /proc/sys/kernel/random/boot_id')).trim(), bootId);

      // mvirtd stops its VMs on exit here: their RAM folder on /dev/shm goes with them.
      assert.ok(existsSync(defaultRamDir(dataDir)), 'guest RAM is a file there');
      c.mqtt.end(true);
      await stopProcess(d);
      assert.equal(existsSync(defaultRamDir(dataDir)), false, 'no RAM folder left in /dev/shm');
    }),
);
