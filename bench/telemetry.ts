/**
 * Telemetry cost (issue target): 50 simulated agents each reporting once a
 * second add at most 5 % of one CPU to mvirtd.
 *
 * mvirtd runs in this process with a bench backend whose "VMs" are `sleep`
 * processes and whose agents are simulated in a separate process
 * (bench/sim/agents.ts), which also holds one subscriber of vm/+/telemetry as
 * a dashboard would. The same 50 ready VMs are measured with telemetry off
 * and on, alternating; the difference in this process's CPU time over the
 * wall time is what telemetry costs: validation, republishing, delivery to
 * the subscriber, roll-ups into SQLite.
 */
import { fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Hypervisor, RunningVm, VmRuntime, ExitInfo } from '../host/hypervisors/types.js';
import { procStartTime } from '../host/hypervisors/proc.js';
import { CMDLINE_KEYS } from '../protocol/agent.js';
import { removeDir } from '../harness/paths.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { ok, round, stealTicks, type BenchRow } from './lib.js';
import type { SimReply, SimRequest } from './sim/agents.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const VMS = 50;
const WINDOW_MS = 15_000;
const ROUNDS = 2;

export type Sim = { ask(m: SimRequest): Promise<SimReply>; kill(): void };

export function startSim(): Sim {
  const child = fork(path.join(here, 'sim/agents.ts'), [], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiting: ((r: SimReply) => void)[] = [];
  child.on('message', (r: SimReply) => waiting.shift()?.(r));
  return {
    ask: (m) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        child.send(m);
      }),
    kill: () => void child.kill('SIGKILL'),
  };
}

/** A backend whose guest is a `sleep` and whose agent socket the simulator serves. */
export function simBackend(sim: Sim, sleeps: Set<number>): Hypervisor {
  return {
    name: 'qemu',
    capabilities: {
      channels: ['virtio-serial'],
      accel: ['kvm', 'tcg'],
      pause: false,
      reboot: false,
      gracefulShutdown: false,
      console: false,
      directKernelBoot: true,
      kernelFormats: ['bzImage'],
      hotplugDisks: false,
    },
    probe: async () => ({ available: true, accel: 'sim' }),
    async launch(spec, _log: Logger): Promise<RunningVm> {
      const child = spawn('sleep', ['100000'], { stdio: 'ignore' });
      await once(child, 'spawn');
      const pid = child.pid!;
      sleeps.add(pid);
      const exited = new Promise<ExitInfo>((resolve) =>
        child.once('exit', (code, signal) => resolve({ code, signal, reason: 'exited' })),
      );
      const sock = path.join(spec.dir, 'agent.sock');
      await sim.ask({
        type: 'serve',
        vmId: spec.vmId,
        sock,
        root: spec.agentArgs[CMDLINE_KEYS.root]!,
      });
      const runtime: VmRuntime = {
        backend: 'qemu',
        pid,
        startTime: procStartTime(pid)!,
        accel: 'sim',
        sockets: { agent: sock },
      };
      const no = (): Promise<void> => Promise.reject(new Error('not in the bench backend'));
      return {
        runtime,
        pause: no,
        resume: no,
        reboot: no,
        powerdown: no,
        status: async () => 'running',
        connectAgent: () =>
          new Promise((resolve, reject) => {
            const s = net.connect(sock);
            s.once('connect', () => resolve(s));
            s.once('error', reject);
          }),
        connectConsole: () => Promise.reject(new Error('no console')),
        signal: (sig) => void child.kill(sig),
        exited,
        detach: async () => undefined,
      };
    },
    identify: () => 'not-ours',
    attach: () => Promise.reject(new Error('no re-attach in the bench')),
    dispose: async () => undefined,
  };
}

/** CPU time of this process (mvirtd) per wall time over a window, in % of one core. */
async function cpuPercent(ms: number): Promise<number> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(ms);
  const c = process.cpuUsage(c0);
  return ((c.user + c.system) / 1000 / (performance.now() - t0)) * 100;
}

export default async function telemetryBench(): Promise<BenchRow[]> {
  const sim = startSim();
  const sleeps = new Set<number>();
  const d = await startTestDaemon({
    hypervisors: [simBackend(sim, sleeps)],
    args: ['--max-vcpus', String(VMS), '--max-memory-mib', String(VMS * 64)],
  });
  const c = await rpcClient(d);
  try {
    for (let i = 0; i < VMS; i++) {
      ok(await c.call('vm.create', { name: `tele-${i}`, memoryMiB: 64 }));
      ok(await c.call('vm.start', { vm: `tele-${i}`, wait: true }, { timeoutMs: 30_000 }));
    }
    await sim.ask({ type: 'watch', url: d.url, filter: `${d.root}/vm/+/telemetry` });
    await c.close();
    await sleep(2000); // let start-up work (status kicks, first flushes) settle
    // The work per message when messages come back to back (caches warm):
    // what the daemon's code costs, apart from how busy the machine is.
    const FLOOD = 100;
    const f0 = process.cpuUsage();
    // Answered once the subscriber has every message: the daemon handled them all.
    await sim.ask({ type: 'flood', perAgent: FLOOD });
    const fc = process.cpuUsage(f0);
    const hotUs = (fc.user + fc.system) / (FLOOD * VMS);
    const off: number[] = [];
    const on: number[] = [];
    const before = (await sim.ask({ type: 'count' })) as Extract<SimReply, { type: 'count' }>;
    let onMs = 0;
    const s0 = stealTicks();
    for (let r = 0; r < ROUNDS; r++) {
      await sim.ask({ type: 'telemetry', intervalMs: 0 });
      off.push(await cpuPercent(WINDOW_MS));
      await sim.ask({ type: 'telemetry', intervalMs: 1000 });
      const t0 = performance.now();
      on.push(await cpuPercent(WINDOW_MS));
      onMs += performance.now() - t0;
    }
    await sim.ask({ type: 'telemetry', intervalMs: 0 });
    const after = (await sim.ask({ type: 'count' })) as Extract<SimReply, { type: 'count' }>;
    const s1 = stealTicks();
    const steal = ((s1.steal - s0.steal) / Math.max(1, s1.total - s0.total)) * 100;
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const added = Math.max(0, mean(on) - mean(off));
    const perSec = ((after.sent - before.sent) * 1000) / onMs;
    /** CPU per telemetry message, in µs: the cost at any rate. */
    const perMsgUs = (added / 100) * (1e6 / perSec);
    const delivered = after.received - before.received;
    return [
      {
        name: `mvirtd CPU, ${VMS} ready VMs, telemetry off`,
        value: round(mean(off), 2),
        unit: '% of a core',
      },
      {
        name: `mvirtd CPU, ${VMS} VMs reporting every second`,
        value: round(mean(on), 2),
        unit: '% of a core',
        note: `${round(perSec, 1)} msg/s in, ${delivered} delivered to one subscriber`,
      },
      {
        name: `CPU per message, ${FLOOD * VMS} back to back`,
        value: round(hotUs, 0),
        unit: 'µs',
        note: `at 50 msg/s that would be ${round((hotUs * 50) / 1e4, 2)} % of a core`,
      },
      {
        name: 'telemetry cost (on − off)',
        value: round(added, 2),
        unit: '% of a core',
        ratio: added,
        target: '<= 5',
        note: `${round(perMsgUs, 0)} µs of CPU per message; host steal time ${round(steal, 0)} % during the run`,
      },
    ];
  } finally {
    await d.stop();
    sim.kill();
    for (const pid of sleeps) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await removeDir(d.dataDir);
  }
}
