/**
 * Guest floods (issue 12 targets), on real QEMU VMs (TCG here) through mvirtd
 * as a separate process, so that /proc tells its own CPU and memory: one VM
 * runs the hostile job of harness/hostile-guest.ts for each kind of
 * message (log, QoS 2 never released, hello, output, console bytes) while
 * another VM stands by. Per kind:
 *  - mvirtd's CPU over the first half of the flood, with nothing else going
 *    on, in % of one core (recorded; goal ≤ 25 % per flooding VM);
 *  - the other VM's `/bin/true` job latency over the second half ÷ its idle
 *    latency (target ≤ 2), both medians.
 * A control comes first: the flooding guest as busy, sending nothing (its
 * QEMU alone takes one of the 2 cores), recorded beside the floods.
 * MVIRT_BENCH_FLOOD_S sets each flood's length (default 20 s);
 * MVIRT_BENCH_FLOOD_KINDS (comma-separated, e.g. `console`) runs only those kinds.
 */
import { spawnDaemon, stopProcess } from '../harness/daemon.js';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import {
  describe as describeFlood,
  measureIdle,
  median,
  runFlood,
  startServiceVm,
  type FloodContext,
} from '../harness/flood.js';
import { watchStates } from '../harness/state-watch.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { FLOOD_KINDS } from '../harness/hostile-guest.js';
import { round, type BenchRow } from './lib.js';

const SECONDS = Number(process.env.MVIRT_BENCH_FLOOD_S ?? 20);
const KINDS = process.env.MVIRT_BENCH_FLOOD_KINDS
  ? FLOOD_KINDS.filter((k) => process.env.MVIRT_BENCH_FLOOD_KINDS!.split(',').includes(k))
  : FLOOD_KINDS;
const BOOT_MS = 300_000;

export default async function flood(): Promise<BenchRow[]> {
  const dataDir = await makeTempDir('mvirt-bench-flood-');
  const d = await spawnDaemon([
    '--data-dir',
    dataDir,
    '--images-dir',
    await imagesDir(),
    '--boot-timeout-ms',
    String(BOOT_MS),
    '--stop-vms-on-exit',
  ]);
  const c = await rpcClient(d);
  const states = await watchStates(d);
  const rows: BenchRow[] = [];
  try {
    const [bystander, flooder] = await Promise.all([
      startServiceVm(c, 'bench-bystander', BOOT_MS),
      startServiceVm(c, 'bench-flooder', BOOT_MS),
    ]);
    const idle = await measureIdle(c, bystander.id);
    rows.push({
      name: 'flood: other VM /bin/true job, idle (p50)',
      value: round(idle.jobMs),
      unit: 'ms',
    });
    const ctx: FloodContext = {
      c,
      d,
      states,
      bystander,
      flooder,
      idle,
      seconds: SECONDS,
      bootMs: BOOT_MS,
    };
    // The control: the guest as busy as in a flood, nothing sent to mvirtd.
    const spin = await runFlood(ctx, { kind: 'spin', windows: 'split' });
    process.stderr.write(`bench: ${describeFlood(spin)}\n`);
    rows.push(
      {
        name: 'control, guest only spinning: mvirtd CPU',
        value: spin.cpuPercent,
        unit: '% core',
        note: 'the same guest loop as the log flood, to /dev/null',
      },
      {
        name: 'control, guest only spinning: other VM job ÷ idle',
        value: round(spin.jobRatio),
        unit: 'ratio',
        note: `${Math.round(median(spin.jobMs))} ms; the flooding guest's QEMU takes a core`,
      },
    );
    for (const kind of KINDS) {
      const f = await runFlood(ctx, { kind, windows: 'split' });
      process.stderr.write(`bench: ${describeFlood(f)}\n`);
      const note = [
        `RSS +${f.rssGrowthMiB} MiB`,
        f.guest ? `guest sent ${f.guest.sent} packets` : null,
        f.console ? `console ${f.console.messages} msgs, ${f.console.bytes} B` : null,
        f.usable ? null : `VM not usable after: ${f.usableNote}`,
      ]
        .filter(Boolean)
        .join('; ');
      rows.push(
        {
          name: `flood ${kind}: mvirtd CPU (first ${SECONDS / 2} s)`,
          value: f.cpuPercent,
          unit: '% core',
          ratio: f.cpuPercent / 100,
          target: '<= 0.25',
          note,
        },
        {
          name: `flood ${kind}: other VM job ÷ idle (p50)`,
          value: round(f.jobRatio),
          unit: 'ratio',
          ratio: f.jobRatio,
          target: '<= 2',
          note: `${Math.round(median(f.jobMs))} ms, n=${f.jobMs.length}`,
        },
      );
      if (!f.daemonAlive) throw new Error(`mvirtd died during the ${kind} flood`);
    }
  } finally {
    await states.close().catch(() => undefined);
    await c.close().catch(() => undefined);
    await stopProcess(d);
    await removeDir(dataDir);
  }
  return rows;
}
