/**
 * Disk hot-plug under QEMU (TCG), through mvirtd: one running VM, a volume
 * attached and detached ROUNDS times.
 *  - attach → visible: from sending vm.attachDisk until a job, already
 *    running in the guest and polling /sys/block/vd*\/serial, reports the
 *    disk (its reply included: an upper bound of what the guest needs).
 *  - detach → DEVICE_DELETED: the wall time of vm.detachDisk, which replies
 *    once QEMU reported the device gone and both block nodes are deleted.
 * Medians of ROUNDS; recorded, no target (TCG bounds both).
 */
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { HOST_ID, spawnDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { median, ok, round, type BenchRow } from './lib.js';

const ROUNDS = 5;
/** Polls every 50 ms for up to 30 s (busybox sleep takes fractions). */
const WAIT_FOR_DISK =
  'i=0; while [ $i -lt 600 ]; do for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$ID" ] && exit 0; done; sleep 0.05; i=$((i+1)); done; exit 9';

export default async function hotplug(): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  const dataDir = await makeTempDir('mvirt-bench-hotplug-');
  const d = await spawnDaemon([
    ...['--data-dir', dataDir, '--images-dir', IMAGES, '--host-id', HOST_ID],
    ...['--listen', '127.0.0.1:0', '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  ]);
  const c = await rpcClient(d);
  try {
    const vol = ok(await c.call('volume.create', { name: 'bench-hot', sizeMiB: 16 }));
    ok(await c.call('vm.create', { name: 'hp', memoryMiB: 256 }));
    const vm = ok(await c.call('vm.start', { vm: 'hp', wait: true }, { timeoutMs: 300_000 }));
    const attach: number[] = [];
    const detach: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      // The watcher runs before the attach is sent: the guest's view, not a
      // job's start-up. It runs once the VM is busy (its retained state).
      const busy = await c.watch(
        `mvirt/${HOST_ID}/vm/${vm.id}/state`,
        (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as { state: string }).state === 'busy',
        60_000,
      );
      const seen = c.call(
        'job.run',
        { vm: 'hp', argv: ['sh', '-c', WAIT_FOR_DISK], env: { ID: vol.id }, wait: true },
        { timeoutMs: 60_000 },
      );
      await busy.message;
      const t0 = performance.now();
      ok(await c.call('vm.attachDisk', { vm: 'hp', volume: vol.id }));
      const job = ok(await seen);
      if (job.exitCode !== 0) throw new Error(`the guest never saw the disk: ${job.stderr}`);
      attach.push(performance.now() - t0);
      const t1 = performance.now();
      ok(await c.call('vm.detachDisk', { vm: 'hp', volume: vol.id }, { timeoutMs: 60_000 }));
      detach.push(performance.now() - t1);
    }
    const fmt = (xs: number[]) => xs.map((x) => Math.round(x)).join(', ');
    return [
      {
        name: 'hot-plug attach → disk visible in the guest',
        value: round(median(attach), 0),
        unit: 'ms',
        note: `median of ${ROUNDS} (${fmt(attach)} ms), TCG; includes the watching job's reply`,
      },
      {
        name: 'hot-plug detach → DEVICE_DELETED (vm.detachDisk reply)',
        value: round(median(detach), 0),
        unit: 'ms',
        note: `median of ${ROUNDS} (${fmt(detach)} ms), TCG; device_del to blockdev-del done`,
      },
    ];
  } finally {
    c.mqtt.end(true);
    d.child.kill('SIGTERM');
    await d.exited;
    await removeDir(dataDir);
  }
}
