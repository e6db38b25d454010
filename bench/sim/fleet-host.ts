/**
 * One mvirtd of bench/fleet.ts's simulated fleet, in a process of its own so
 * its CPU time is its own: the bench backend of bench/telemetry.ts (`sleep`
 * processes as VMs, agents simulated in a further process), driven over IPC.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { removeDir } from '../../harness/paths.js';
import { rpcClient } from '../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../harness/daemon.js';
import { ok } from '../lib.js';
import { simBackend, startSim, type Sim } from '../telemetry.js';

export type SimHostRequest =
  | { type: 'start'; hostId: string; vms: number; args: string[] }
  | { type: 'telemetry'; intervalMs: number }
  /** This process's CPU over the next `ms`, in % of one core. */
  | { type: 'cpu'; ms: number }
  | { type: 'stop' };
export type SimHostReply = { type: 'ok' } | { type: 'cpu'; percent: number };

let sim: Sim | undefined;
let d: TestDaemon | undefined;
const sleeps = new Set<number>();
const reply = (r: SimHostReply): void => void process.send!(r);

process.on('message', (m: SimHostRequest) => {
  void (async () => {
    if (m.type === 'start') {
      sim = startSim();
      d = await startTestDaemon({
        hypervisors: [simBackend(sim, sleeps)],
        args: [
          '--host-id',
          m.hostId,
          '--max-vcpus',
          String(m.vms),
          '--max-memory-mib',
          String(m.vms * 64),
          ...m.args,
        ],
      });
      const c = await rpcClient(d);
      for (let i = 0; i < m.vms; i++) {
        ok(await c.call('vm.create', { name: `sim-${i}`, memoryMiB: 64 }));
        ok(await c.call('vm.start', { vm: `sim-${i}`, wait: true }, { timeoutMs: 30_000 }));
      }
      await c.close();
      await d.daemon.uplink?.connected();
      reply({ type: 'ok' });
    } else if (m.type === 'telemetry') {
      await sim!.ask({ type: 'telemetry', intervalMs: m.intervalMs });
      reply({ type: 'ok' });
    } else if (m.type === 'cpu') {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await sleep(m.ms);
      const c = process.cpuUsage(c0);
      reply({
        type: 'cpu',
        percent: ((c.user + c.system) / 1000 / (performance.now() - t0)) * 100,
      });
    } else {
      await d?.stop();
      sim?.kill();
      for (const pid of sleeps)
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      if (d) await removeDir(d.dataDir);
      reply({ type: 'ok' });
      process.exit(0);
    }
  })();
});
