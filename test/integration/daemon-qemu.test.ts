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
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import type { ReplyEnvelope, VmRecord } from '../../protocol/rpc.js';
import {
  makeTempDir,
  removeDir,
  rpcClient,
  HOST_ID,
  type RpcClient,
} from '../helpers/daemon-harness.js';
import { REPO, spawnDaemon, type DaemonProcess } from '../helpers/daemon-process.js';

const IMAGES = process.env.MVIRT_IMAGES_DIR ?? path.join(REPO, 'test-output/data/images');
const skip = existsSync(path.join(IMAGES, 'default', 'manifest.json'))
  ? false
  : `no default image in ${IMAGES} (run npm test, or set MVIRT_IMAGES_DIR)`;
const ROOT = `mvirt/${HOST_ID}`;
const BOOT_MS = 180_000;

const pids = new Set<number>();
const daemons: DaemonProcess[] = [];

/** On failure, show what the daemons said: a TCG boot that goes wrong in CI must be explainable. */
async function explained<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    for (const d of daemons)
      console.error(`--- mvirtd ${d.pid} log tail ---\n${d.logs.slice(-150).join('\n')}`);
    throw err;
  }
}
const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL'); // no orphan QEMU, whatever happened
    } catch {
      /* gone */
    }
  }
});

/** SIGKILL every QEMU whose command line points into dataDir: no orphans, even after a failure. */
function killQemusOf(dataDir: string): void {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`${dataDir}/vm/`)) {
        process.kill(Number(pid), 'SIGKILL');
      }
    } catch {
      /* gone meanwhile */
    }
  }
}

function ok<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

async function daemon(dataDir: string): Promise<{ d: DaemonProcess; c: RpcClient }> {
  const d = await spawnDaemon([
    '--data-dir',
    dataDir,
    '--images-dir',
    IMAGES,
    '--listen',
    '127.0.0.1:0',
    '--host-id',
    HOST_ID,
    '--boot-timeout-ms',
    String(BOOT_MS),
    // The cleanup below stops the daemon with SIGTERM; its VMs must go with it.
    '--stop-vms-on-exit',
    '--log-level',
    'debug',
  ]);
  daemons.push(d);
  const c = await rpcClient(d.url, ROOT);
  cleanups.push(async () => {
    c.mqtt.end(true);
    d.child.kill('SIGTERM');
    await d.exited;
    killQemusOf(dataDir); // whatever state the test left its VMs in
  });
  return { d, c };
}

const stateIs = (want: string) => (_t: string, p: Buffer) =>
  (JSON.parse(p.toString()) as { to?: string }).to === want;

test('real VM lifecycle under QEMU', { skip, timeout: 900_000 }, () =>
  explained(async () => {
    const dataDir = await makeTempDir('mvirt-qemu-');
    cleanups.push(() => removeDir(dataDir));
    const { c } = await daemon(dataDir);
    const vm = ok(await c.call('vm.create', { name: 'life' })) as VmRecord;
    const started = ok(
      await c.call('vm.start', { vm: 'life', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    ) as VmRecord;
    pids.add(started.pid!);
    assert.equal(started.state, 'ready');
    assert.ok(started.agentVersion);
    assert.equal(
      (ok(await c.call('vm.pause', { vm: 'life' }, { timeoutMs: 30_000 })) as VmRecord).state,
      'paused',
    );
    assert.equal(
      (ok(await c.call('vm.resume', { vm: 'life' }, { timeoutMs: 30_000 })) as VmRecord).state,
      'ready',
    );
    const readyAgain = await c.watch(`${ROOT}/vm/${vm.id}/events`, stateIs('ready'), BOOT_MS);
    ok(await c.call('vm.reboot', { vm: 'life' }, { timeoutMs: 30_000 }));
    await readyAgain.message;
    const after = ok(await c.call('vm.get', { vm: 'life' })) as VmRecord;
    assert.equal(after.pid, started.pid, 'a reboot keeps the QEMU process');
    const stopped = ok(await c.call('vm.stop', { vm: 'life' }, { timeoutMs: 120_000 })) as VmRecord;
    assert.equal(stopped.state, 'stopped');

    ok(await c.call('vm.delete', { vm: 'life' }));
  }),
);

// kill and death-from-outside each get their own daemon: a second boot in a
// daemon right after a VM of it stopped can wedge that daemon (an open defect
// written up in the issue note), and these tests are about kill paths.
test('vm.kill stops a ready VM at once', { skip, timeout: 900_000 }, () =>
  explained(async () => {
    const dataDir = await makeTempDir('mvirt-qemu-kill-');
    cleanups.push(() => removeDir(dataDir));
    const { c } = await daemon(dataDir);
    ok(await c.call('vm.create', { name: 'life-kill' }));
    const again = ok(
      await c.call('vm.start', { vm: 'life-kill', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    ) as VmRecord;
    pids.add(again.pid!);
    assert.equal(
      (ok(await c.call('vm.kill', { vm: 'life-kill' }, { timeoutMs: 30_000 })) as VmRecord).state,
      'stopped',
    );
  }),
);

test(
  'a QEMU killed from outside is noticed within about a second',
  { skip, timeout: 900_000 },
  () =>
    explained(async () => {
      const dataDir = await makeTempDir('mvirt-qemu-ext-');
      cleanups.push(() => removeDir(dataDir));
      const { c } = await daemon(dataDir);
      // QEMU killed from outside: noticed within about a second.
      ok(await c.call('vm.create', { name: 'life-ext' }));
      const third = ok(
        await c.call('vm.start', { vm: 'life-ext' }, { timeoutMs: 60_000 }),
      ) as VmRecord;
      const fresh = ok(await c.call('vm.get', { vm: 'life-ext' })) as VmRecord;
      pids.add(fresh.pid!);
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
    const dataDir = await makeTempDir('mvirt-qemu-rec-');
    cleanups.push(() => removeDir(dataDir));
    const first = await daemon(dataDir);
    ok(await first.c.call('vm.create', { name: 'keep' }));
    const started = ok(
      await first.c.call('vm.start', { vm: 'keep', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    ) as VmRecord;
    pids.add(started.pid!);
    first.c.mqtt.end(true);
    first.d.child.kill('SIGKILL');
    await first.d.exited;
    process.kill(started.pid!, 0); // QEMU survived its daemon

    const second = await daemon(dataDir);
    const back = ok(await second.c.call('vm.get', { vm: 'keep' })) as VmRecord;
    assert.equal(back.pid, started.pid, 'same QEMU process: no reboot');
    assert.equal(back.state, 'ready');
    const stopped = ok(
      await second.c.call('vm.stop', { vm: 'keep' }, { timeoutMs: 120_000 }),
    ) as VmRecord;
    assert.equal(stopped.state, 'stopped');
  },
);
