/**
 * Real microVMs under QEMU (TCG) through mvirtd, as a separate process:
 * create → start(wait) → ready → pause → resume → reboot → ready → stop;
 * kill; a QEMU killed from outside is noticed; kill -9 mvirtd while a VM runs
 * and the restarted daemon has it ready again with the same QEMU pid.
 * Needs the default image (`npm test` builds it into test-output/data/images,
 * or set MVIRT_IMAGES_DIR); skipped otherwise. Generous timeouts: TCG on a
 * busy 2-core machine is slow. No sleeps: every wait is on a message.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BOOT_MS,
  explained,
  field,
  ok,
  qemuDaemon as daemon,
  ROOT,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const stateIs = (want: string) => field('to', want);

test('real VM lifecycle under QEMU', { skip, timeout: 900_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-qemu-');
    const { c } = await daemon(dataDir);
    const vm = ok(await c.call('vm.create', { name: 'life' }));
    const started = ok(
      await c.call('vm.start', { vm: 'life', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(started.pid!);
    assert.equal(started.state, 'ready');
    assert.ok(started.agentVersion);
    assert.equal(
      ok(await c.call('vm.pause', { vm: 'life' }, { timeoutMs: 30_000 })).state,
      'paused',
    );
    assert.equal(
      ok(await c.call('vm.resume', { vm: 'life' }, { timeoutMs: 30_000 })).state,
      'ready',
    );
    const readyAgain = await c.watch(`${ROOT}/vm/${vm.id}/events`, stateIs('ready'), BOOT_MS);
    ok(await c.call('vm.reboot', { vm: 'life' }, { timeoutMs: 30_000 }));
    await readyAgain.message;
    const after = ok(await c.call('vm.get', { vm: 'life' }));
    assert.equal(after.pid, started.pid, 'a reboot keeps the QEMU process');
    const stopped = ok(await c.call('vm.stop', { vm: 'life' }, { timeoutMs: 120_000 }));
    assert.equal(stopped.state, 'stopped');

    // Started again right after its stop (same folder, same socket paths), then killed.
    const again = ok(
      await c.call('vm.start', { vm: 'life', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(again.pid!);
    assert.equal(again.state, 'ready');
    assert.notEqual(again.pid, started.pid);
    const killed = ok(await c.call('vm.kill', { vm: 'life' }, { timeoutMs: 30_000 }));
    assert.equal(killed.state, 'stopped');
    assert.throws(() => process.kill(again.pid!, 0), /ESRCH/);

    ok(await c.call('vm.delete', { vm: 'life' }));
  }),
);

test(
  'a QEMU killed from outside is noticed within about a second',
  { skip, timeout: 900_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-qemu-ext-');
      const { c } = await daemon(dataDir);
      // QEMU killed from outside: noticed within about a second.
      ok(await c.call('vm.create', { name: 'life-ext' }));
      const third = ok(await c.call('vm.start', { vm: 'life-ext' }, { timeoutMs: 60_000 }));
      const fresh = ok(await c.call('vm.get', { vm: 'life-ext' }));
      trackPid(fresh.pid!);
      const failed = await c.watch(`${ROOT}/vm/${third.id}/events`, stateIs('failed'), 10_000);
      const t0 = performance.now();
      process.kill(fresh.pid!, 'SIGKILL');
      await failed.message;
      assert.ok(
        performance.now() - t0 < 1500,
        `noticed after ${Math.round(performance.now() - t0)} ms`,
      );
    }),
);

test(
  'recovery: kill -9 mvirtd while a VM runs; it is ready again, same QEMU',
  { skip, timeout: 900_000 },
  async () => {
    const dataDir = await tempDataDir('mvirt-qemu-rec-');
    const first = await daemon(dataDir);
    ok(await first.c.call('vm.create', { name: 'keep' }));
    const started = ok(
      await first.c.call('vm.start', { vm: 'keep', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(started.pid!);
    first.c.mqtt.end(true);
    first.d.child.kill('SIGKILL');
    await first.d.exited;
    process.kill(started.pid!, 0); // QEMU survived its daemon

    const second = await daemon(dataDir);
    const back = ok(await second.c.call('vm.get', { vm: 'keep' }));
    assert.equal(back.pid, started.pid, 'same QEMU process: no reboot');
    assert.equal(back.state, 'ready');
    const stopped = ok(await second.c.call('vm.stop', { vm: 'keep' }, { timeoutMs: 120_000 }));
    assert.equal(stopped.state, 'stopped');
  },
);
