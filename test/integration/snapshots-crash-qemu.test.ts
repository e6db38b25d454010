/**
 * kill -9 of mvirtd in the middle of saving a snapshot and in the middle of a
 * fork's restore (its state still loading), in real microVMs under QEMU
 * (TCG). After a restart on the same data dir: no half-written snapshot is
 * listed (nor left on disk), the source VM is re-attached as it was (paused
 * while its state was being saved) and goes on, the half-launched fork is
 * failed and its QEMU ended, and no QEMU of the data dir is left that no VM
 * record names.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { DaemonProcess } from '../../harness/daemon.js';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const JOB_MS = 120_000;

/** Resolves at the first log line of `d` from now on that contains every one of `parts`. */
function logged(d: DaemonProcess, ...parts: string[]): Promise<void> {
  const from = d.logs.length;
  return new Promise((resolve) => {
    const seen = () => d.logs.slice(from).some((l) => parts.every((p) => l.includes(p)));
    const on = () => {
      if (!seen()) return;
      d.child.stderr!.off('data', on);
      resolve();
    };
    d.child.stderr!.on('data', on);
  });
}

/** Pids of QEMUs whose command line points into this data dir. */
function qemusOf(dataDir: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8');
        return argv.includes('qemu-system') && argv.includes(`${dataDir}/vm/`);
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function killHard(d: DaemonProcess): Promise<void> {
  d.child.kill('SIGKILL');
  await d.exited;
}

test(
  'kill -9 during a snapshot and during a restore: nothing half-made is usable, no orphan',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-snapcrash-');
      const first = await qemuDaemon(dataDir, [], { leaveVms: true });
      ok(await first.c.call('vm.create', { name: 'src', memoryMiB: 256 }));
      const src = ok(
        await first.c.call('vm.start', { vm: 'src', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(src.pid);

      // 1. Killed while the state streams into the snapshot's folder.
      const saving = logged(first.d, '"qmpEvent":"MIGRATION"'); // the save has begun
      const pending = first.c.call(
        'vm.snapshot',
        { vm: 'src', name: 'half' },
        { timeoutMs: JOB_MS },
      );
      pending.catch(() => undefined);
      await saving;
      await killHard(first.d);
      first.c.mqtt.end(true);

      const second = await qemuDaemon(dataDir, [], { leaveVms: true });
      assert.deepEqual(ok(await second.c.call('snapshot.list', {})).snapshots, []);
      assert.deepEqual(
        readdirSync(path.join(dataDir, 'snapshots')),
        [],
        'the half-written folder is gone',
      );
      const back = ok(await second.c.call('vm.get', { vm: 'src' }));
      assert.equal(back.pid, src.pid, 're-attached, the same QEMU');
      assert.equal(back.state, 'paused', 'as it was while its state was being saved');
      assert.equal(ok(await second.c.call('vm.resume', { vm: 'src' })).state, 'ready');
      assert.deepEqual(qemusOf(dataDir), [src.pid]);

      // 2. A good snapshot, then killed while a fork's state is loading.
      ok(await second.c.call('vm.snapshot', { vm: 'src', name: 'good' }, { timeoutMs: JOB_MS }));
      const spawned = logged(second.d, '"msg":"QEMU spawned"');
      // The source's QEMU was spawned by the first daemon: this is the fork's.
      const forking = second.c.call(
        'vm.create',
        { name: 'fork', fromSnapshot: 'good' },
        { timeoutMs: JOB_MS },
      );
      forking.catch(() => undefined);
      await spawned;
      await killHard(second.d);
      second.c.mqtt.end(true);
      assert.equal(qemusOf(dataDir).length, 2, 'the fork’s QEMU outlived its daemon');

      const third = await qemuDaemon(dataDir, [], { leaveVms: true });
      const fork = ok(await third.c.call('vm.get', { vm: 'fork' }));
      assert.equal(fork.state, 'failed', fork.stateReason);
      assert.equal(fork.pid, undefined);
      assert.deepEqual(qemusOf(dataDir), [src.pid], 'the half-launched fork’s QEMU was ended');
      assert.equal(ok(await third.c.call('snapshot.get', { snapshot: 'good' })).state, 'ready');
      // And the fork starts cleanly now, from the same snapshot.
      const again = ok(
        await third.c.call('vm.start', { vm: 'fork', wait: true }, { timeoutMs: BOOT_MS }),
      );
      trackPid(again.pid);
      assert.equal(again.state, 'ready');
      assert.equal(
        again.restore?.snapshot,
        ok(await third.c.call('snapshot.get', { snapshot: 'good' })).id,
      );
    }),
);
