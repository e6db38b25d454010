/**
 * Snapshots, forks and templates under QEMU (TCG), through mvirtd, side by
 * side in one run on one daemon:
 *  - cold boot → ready of a fresh VM of the default image, against restore →
 *    ready of a fork of a snapshot of the same VM (both spawn → agent ready,
 *    the host's clock; target ≤ 0.1);
 *  - `job.run /bin/true` with no target (a fresh ephemeral VM: the spare
 *    fork of its template mvirtd resumed ahead) against the same job on a
 *    warm service VM (target ≤ 5);
 *  - 8 forks of one snapshot → all ready, against one restore, both the wall
 *    time of vm.create {fromSnapshot, wait} (target ≤ 4 on 2 cores);
 *  - host memory of the 8 idle forks (QEMU PSS) against 8 × one VM's RSS
 *    (recorded: each fork's RAM is its own copy of the state here);
 *  - save time and size of a snapshot (recorded).
 */
import { readFileSync, statSync } from 'node:fs';
import { imagesDir } from '../harness/build.js';
import { rpcClient, type RpcClient } from '../harness/client.js';
import { HOST_ID, spawnDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { median, ok, round, timedJob, type BenchModule, type BenchRow } from './lib.js';

const BOOT_MS = 300_000;
const FORKS = 8;
const JOBS = 5;

/**
 * A QEMU's host memory, MiB: its private and file pages (PSS) from /proc, and
 * its guest RAM file on tmpfs (--ram-dir) by the blocks it holds, mapped or
 * not (PSS would miss the pages the guest has not touched since its restore).
 */
function memoryOf(pid: number): { rss: number; pss: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  const ramFile = /mem-path=([^,\0]+)/.exec(argv)?.[1];
  const ram = ramFile ? (statSync(ramFile).blocks * 512) / 2 ** 20 : 0;
  return {
    rss: (kb('Rss') - kb('RssShmem')) / 1024 + ram,
    pss: (kb('Pss_Anon') + kb('Pss_File')) / 1024 + ram,
  };
}

async function ready(c: RpcClient, vm: string) {
  return ok(await c.call('vm.start', { vm, wait: true }, { timeoutMs: BOOT_MS }));
}

const snapshots: BenchModule = async (emit) => {
  const IMAGES = await imagesDir();
  const dataDir = await makeTempDir('mvirt-bench-snap-');
  const d = await spawnDaemon([
    ...['--data-dir', dataDir, '--images-dir', IMAGES, '--host-id', HOST_ID],
    ...['--listen', '127.0.0.1:0', '--boot-timeout-ms', String(BOOT_MS), '--stop-vms-on-exit'],
    ...['--max-vms', '16', '--max-memory-mib', '8192', '--max-vcpus', '16'],
    // e.g. MVIRT_BENCH_DAEMON_ARGS='--ram-dir none': the same rows with RAM in the stream.
    ...(process.env.MVIRT_BENCH_DAEMON_ARGS?.split(' ').filter(Boolean) ?? []),
  ]);
  const c = await rpcClient(d);
  const add = (r: BenchRow) => emit([r]);
  try {
    // Cold boot, then a snapshot of that VM once idle.
    ok(await c.call('vm.create', { name: 'cold', memoryMiB: 256 }));
    const cold = await ready(c, 'cold');
    const coldMs = cold.boot?.readyAtMs ?? NaN;
    const coldRss = memoryOf(cold.pid!).rss;
    const t0 = performance.now();
    const snap = ok(
      await c.call('vm.snapshot', { vm: 'cold', name: 'bench' }, { timeoutMs: BOOT_MS }),
    );
    const saveMs = performance.now() - t0;
    add({
      name: 'vm.snapshot of an idle 256 MiB µOS VM',
      value: round(saveMs, 0),
      unit: 'ms',
      note: `${(snap.bytes / 2 ** 20).toFixed(0)} MiB of state (ram.bin sparse where guest RAM is a file); the VM pauses only while it is written, the call also hashes it`,
    });

    // One restore → ready (spawn → agent ready, like the cold boot's figure),
    // and the wall time of its vm.create {wait}, as the 8 forks' below.
    const tOne = performance.now();
    const one = ok(
      await c.call(
        'vm.create',
        { name: 'one', fromSnapshot: 'bench', wait: true },
        { timeoutMs: BOOT_MS },
      ),
    );
    const oneWallMs = performance.now() - tOne;
    const restoreMs = one.restore?.readyAtMs ?? NaN;
    add({
      name: 'restore → ready ÷ cold boot → ready (same image and size)',
      value: round(restoreMs, 0),
      unit: 'ms',
      ratio: round(restoreMs / coldMs, 3),
      target: '<= 0.1',
      note: `restore ${restoreMs} ms (state loaded in ${one.restore?.spawnToRunningMs} ms) vs cold boot ${coldMs} ms, spawn → agent ready`,
    });
    ok(await c.call('vm.kill', { vm: 'one' }));

    // A job in a fresh VM (template fork) vs on a warm service VM.
    const warm: number[] = [];
    for (let i = 0; i < JOBS; i++)
      warm.push(await timedJob(c, { vm: 'cold', argv: ['/bin/true'] }));
    // Each later one takes the spare mvirtd resumed meanwhile (--spares,
    // default 1), once it said it was ready (warmed up, as pool VMs are
    // below): the job's time, not the refill's.
    let sparesReady = 0;
    let onSpare = (): void => undefined;
    const events = `mvirt/${HOST_ID}/events`;
    c.mqtt.on('message', (topic, p) => {
      if (topic !== events) return;
      if (!/^spare VM \S+ ready/.test((JSON.parse(p.toString()) as { message: string }).message))
        return;
      sparesReady++;
      onSpare();
    });
    await c.mqtt.subscribeAsync(events, { qos: 1 });
    const spareReady = (n: number) =>
      new Promise<void>((resolve) => {
        const check = () => (sparesReady >= n ? resolve() : (onSpare = check));
        check();
      });
    // The first job without a VM boots one and makes the template: not measured.
    await timedJob(c, { argv: ['/bin/true'], memoryMiB: 256 });
    const fresh: number[] = [];
    for (let i = 0; i < JOBS; i++) {
      await spareReady(i + 1);
      fresh.push(await timedJob(c, { argv: ['/bin/true'], memoryMiB: 256 }));
    }
    // The last job's refill, done before the rows below share the 2 cores.
    await spareReady(JOBS + 1);
    const w = median(warm);
    const f = median(fresh);
    add({
      name: 'job /bin/true in a fresh VM (no target) ÷ on a warm service VM',
      value: round(f, 0),
      unit: 'ms',
      ratio: round(f / w, 2),
      target: '<= 5',
      note: `medians of ${JOBS}: fresh ${fresh.map(Math.round).join(', ')} ms (each on a spare: a fork of the image's template, resumed ahead), warm ${warm.map(Math.round).join(', ')} ms`,
    });

    // The same job where a snapshot pool is the default pool (--default-pool):
    // each job takes a fresh, ready fork and its VM goes when it ends; the pool
    // restores the next one meanwhile.
    ok(await c.call('pool.set', { name: 'fresh', min: 1, snapshot: true, memoryMiB: 256 }));
    const pooled: number[] = [];
    for (let i = 0; i < JOBS; i++) {
      // A ready member first: the job's time, not the pool's refill.
      await (
        await c.watch(
          `mvirt/${HOST_ID}/pool/fresh/state`,
          (_t, p) =>
            p.length > 0 && (JSON.parse(p.toString()) as { vms: { ready: number } }).vms.ready >= 1,
          BOOT_MS,
        )
      ).message;
      pooled.push(await timedJob(c, { pool: 'fresh', argv: ['/bin/true'] }));
    }
    const pm = median(pooled);
    add({
      name: 'job /bin/true in a fresh VM of a snapshot pool ÷ on a warm service VM',
      value: round(pm, 0),
      unit: 'ms',
      ratio: round(pm / w, 2),
      target: '<= 5',
      note: `medians of ${JOBS}: ${pooled.map(Math.round).join(', ')} ms; a fresh fork per job (pool.set {snapshot: true}), as --default-pool gives jobs with no target`,
    });
    ok(await c.call('pool.delete', { name: 'fresh' }));

    // 8 forks side by side.
    const t1 = performance.now();
    const made = ok(
      await c.call(
        'vm.create',
        { name: 'f', fromSnapshot: 'bench', count: FORKS, wait: true },
        { timeoutMs: BOOT_MS },
      ),
    );
    const wallMs = performance.now() - t1;
    const forks = [made, ...(made.forks ?? [])];
    add({
      name: `${FORKS} forks of one snapshot → all ready, wall ÷ one restore`,
      value: round(wallMs, 0),
      unit: 'ms',
      ratio: round(wallMs / oneWallMs, 2),
      target: '<= 4',
      note: `2 cores; vm.create {count: ${FORKS}, wait} ÷ the same call for one (${Math.round(oneWallMs)} ms), both wall; each fork spawn → ready: ${forks.map((v) => v.restore?.readyAtMs).join(', ')} ms`,
    });
    const pss = forks.reduce((sum, v) => sum + memoryOf(v.pid!).pss, 0);
    add({
      name: `host memory of ${FORKS} idle forks ÷ ${FORKS} × one VM's`,
      value: round(pss, 0),
      unit: 'MiB',
      ratio: round(pss / (FORKS * coldRss), 2),
      note: `QEMU PSS (anon + file) + its RAM file's blocks; one cold-booted VM: ${coldRss.toFixed(0)} MiB; recorded (each fork's RAM is its own sparse copy of the snapshot's)`,
    });
    return []; // every row was emitted as it was measured
  } finally {
    c.mqtt.end(true);
    d.child.kill('SIGTERM');
    await d.exited;
    await removeDir(dataDir);
  }
};

export default snapshots;
