/**
 * What confining the hypervisor costs a boot: two mvirtd side by side (root
 * needed), one confining QEMU (own uid, cgroup, setpriv launcher) and one
 * started with --unconfined, booting the default image alternately so that
 * machine drift hits both alike. The figure is the wall time of
 * `vm.start {wait: true}` (request → ready reply: it includes the folder
 * chown, the cgroup and the launcher step, which happen before QEMU is
 * spawned), median of ROUNDS; target confined ÷ unconfined ≤ 1.05.
 */
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { HOST_ID, spawnDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { median, ok, round, type BenchRow } from './lib.js';

const ROUNDS = 5;

export default async function confine(): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  if (process.getuid?.() !== 0)
    return [{ name: 'confine', value: NaN, unit: '', note: 'needs root (confinement needs it)' }];

  const side = async (extra: string[]) => {
    const dataDir = await makeTempDir('mvirt-bench-confine-');
    const d = await spawnDaemon([
      ...['--data-dir', dataDir, '--images-dir', IMAGES, '--host-id', HOST_ID],
      ...['--listen', '127.0.0.1:0', '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
      ...extra,
    ]);
    const c = await rpcClient(d);
    const info = ok(await c.call('system.info', {}));
    const stop = async () => {
      c.mqtt.end(true);
      d.child.kill('SIGTERM');
      await d.exited;
      await removeDir(dataDir);
    };
    let n = 0;
    const boot = async (): Promise<{ wallMs: number; readyAtMs: number }> => {
      const name = `b${n++}`;
      ok(await c.call('vm.create', { name, memoryMiB: 256 }));
      const t0 = performance.now();
      const vm = ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: 300_000 }));
      const wallMs = performance.now() - t0;
      ok(await c.call('vm.kill', { vm: name }));
      ok(await c.call('vm.delete', { vm: name }));
      return { wallMs, readyAtMs: vm.boot?.readyAtMs ?? NaN };
    };
    return { info, boot, stop };
  };

  const confined = await side([]);
  const unconfined = await side(['--unconfined']);
  try {
    const conf = confined.info.backends.find((b) => b.name === 'qemu')?.confinement;
    if (!conf?.user || !conf.cgroup)
      throw new Error(`the confined side is not confined: ${JSON.stringify(conf)}`);
    await confined.boot(); // page cache, QEMU binary
    await unconfined.boot();
    const a: { wallMs: number; readyAtMs: number }[] = [];
    const b: { wallMs: number; readyAtMs: number }[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      // Alternate which goes first, too.
      if (i % 2 === 0) {
        a.push(await confined.boot());
        b.push(await unconfined.boot());
      } else {
        b.push(await unconfined.boot());
        a.push(await confined.boot());
      }
    }
    const [wa, wb] = [median(a.map((x) => x.wallMs)), median(b.map((x) => x.wallMs))];
    const [ra, rb] = [median(a.map((x) => x.readyAtMs)), median(b.map((x) => x.readyAtMs))];
    return [
      {
        name: 'start→ready, confined ÷ unconfined QEMU (wall)',
        value: round(wa / wb, 3),
        unit: '×',
        ratio: round(wa / wb, 3),
        target: '<= 1.05',
        note: `median of ${ROUNDS} alternated: ${Math.round(wa)} ms confined (uid, cgroup ${conf.cgroup}, seccomp) vs ${Math.round(wb)} ms unconfined; from QEMU spawn ${Math.round(ra)} vs ${Math.round(rb)} ms`,
      },
    ];
  } finally {
    await confined.stop();
    await unconfined.stop();
  }
}
