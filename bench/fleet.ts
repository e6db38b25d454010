/**
 * Fleet figures (issue 16, docs/fleet.md "Sizing"):
 *
 *  1. `job.run` → running on a fake VM (a ready pool member, the real agent
 *     core), placed through the fleet queue across two bridged Mosquittos
 *     (controller on A, the host's uplink on B) ÷ the same `job.run` sent to
 *     the host on its embedded broker. Recorded, goal ≤ 2. The fleet time is
 *     split where it goes: queue → claim taken, claim → the host's reply
 *     (accepted), reply → `running` seen by the controller.
 *  2. 10 mvirtd processes on one Mosquitto, each with simulated VMs sending
 *     telemetry once a second (bench/sim/fleet-host.ts): the messages per
 *     second a subscriber of `mvirt/#` gets from the broker, the broker's
 *     CPU, and each mvirtd's CPU. Recorded.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import { createFleetRequester } from '../protocol/fleet-client.js';
import type { JobRecord } from '../protocol/rpc.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { createFakeHypervisor, killFakes } from '../harness/fake-vms.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { ok, round, type BenchRow } from './lib.js';
import type { SimHostReply, SimHostRequest } from './sim/fleet-host.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = 25;
const SIM_HOSTS = 10;
const SIM_VMS = 20;
const WINDOW_MS = 15_000;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const range = (xs: number[]): string => `${round(Math.min(...xs), 1)}–${round(Math.max(...xs), 1)}`;

/** Resolves with the time a job of `jobs` first shows a state other than queued. */
function runningSeen(c: MqttClient, filter: string) {
  const seen = new Map<string, number>();
  const waiters = new Map<string, (t: number) => void>();
  c.on('message', (topic, payload) => {
    if (payload.length === 0 || !topic.endsWith('/state') || !topic.includes('/job/')) return;
    const j = JSON.parse(payload.toString()) as JobRecord;
    if (j.state === 'queued' || seen.has(j.jobId)) return;
    const t = performance.now();
    seen.set(j.jobId, t);
    waiters.get(j.jobId)?.(t);
  });
  return {
    subscribe: () => c.subscribeAsync(filter, { qos: 0 }),
    when: (jobId: string): Promise<number> =>
      seen.has(jobId)
        ? Promise.resolve(seen.get(jobId)!)
        : new Promise((resolve) => waiters.set(jobId, resolve)),
  };
}

async function latency(): Promise<BenchRow[]> {
  const users = { alice: 'pw-alice' };
  const a = await startMosquitto({
    hosts: { h1: 'pw-h1' },
    controllers: users,
    bridges: { 'bridge-b': 'pw-bridge' },
  });
  const b = await startMosquitto({
    hosts: { h1: 'pw-h1' },
    controllers: users,
    bridgeTo: { port: a.bridgesPort, username: 'bridge-b', password: 'pw-bridge' },
  });
  const tmp = await makeTempDir('mvirt-bench-fleet-');
  const cred = path.join(tmp, 'h1.json');
  writeFileSync(cred, JSON.stringify({ username: 'h1', password: 'pw-h1' }));
  chmodSync(cred, 0o600);
  const hv = createFakeHypervisor({ agent: 'real' });
  const d = await startTestDaemon({
    hypervisors: [hv],
    args: [
      '--host-id',
      'h1',
      '--uplink',
      `mqtt://127.0.0.1:${b.hostsPort}`,
      '--uplink-credentials',
      cred,
      '--no-templates',
      '--spares',
      '0',
    ],
  });
  const local = await rpcClient(d);
  const ctl = await mqtt.connectAsync(`mqtt://127.0.0.1:${a.controllersPort}`, {
    username: 'alice',
    password: 'pw-alice',
    clientId: 'bench-fleet',
  });
  // As docs/fleet.md asks of controllers: no Nagle on their own socket either.
  (ctl.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
  try {
    await d.daemon.uplink!.connected();
    ok(await local.call('pool.set', { name: 'p', min: 1 }));
    const poolReady = async (): Promise<void> => {
      for (;;) {
        const p = ok(await local.call('pool.get', { name: 'p' })) as { vms: { ready: number } };
        if (p.vms.ready >= 1) return;
        await sleep(20);
      }
    };
    await poolReady();
    const fleet = await createFleetRequester({
      mqtt: ctl,
      prefix: 'mvirt',
      clientId: 'bench-fleet',
    });
    const farSeen = runningSeen(ctl, 'mvirt/h1/job/+/state');
    await farSeen.subscribe();
    const nearSeen = runningSeen(local.mqtt, `${d.root}/job/+/state`);
    await nearSeen.subscribe();
    const embedded: number[] = [];
    const bridged: number[] = [];
    const claim: number[] = [];
    const accept: number[] = [];
    const start: number[] = [];
    // Alternating, after one of each to warm both paths.
    for (let i = 0; i <= ROUNDS; i++) {
      await poolReady();
      let t0 = performance.now();
      const r = ok(await local.call('job.run', { pool: 'p', argv: ['true'] })) as { jobId: string };
      const t1 = await nearSeen.when(r.jobId);
      if (i > 0) embedded.push(t1 - t0);
      await poolReady();
      t0 = performance.now();
      const placed = await fleet.request('job.run', { pool: 'p', argv: ['true'] });
      const t2 = await farSeen.when(placed.result.jobId);
      if (i === 0) continue;
      bridged.push(t2 - t0);
      claim.push(placed.claimMs);
      accept.push(placed.ms - placed.claimMs);
      start.push(Math.max(0, t2 - t0 - placed.ms));
    }
    await fleet.close();
    const ratio = median(bridged) / median(embedded);
    return [
      {
        name: 'job.run → running, embedded broker (pool VM, fake)',
        value: round(median(embedded), 1),
        unit: 'ms',
        note: `median of ${ROUNDS}, range ${range(embedded)}`,
      },
      {
        name: 'job.run → running, fleet queue across bridged Mosquittos',
        value: round(median(bridged), 1),
        unit: 'ms',
        note: `median of ${ROUNDS}, range ${range(bridged)}; queue → claim ${round(median(claim), 1)}, claim → accepted ${round(median(accept), 1)}, accepted → running seen ${round(median(start), 1)} ms`,
      },
      {
        name: 'fleet job.run ÷ embedded job.run (to running)',
        value: round(ratio, 2),
        unit: '×',
        ratio,
        target: '<= 2',
      },
    ];
  } finally {
    await ctl.endAsync(true).catch(() => undefined);
    await local.close();
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
    await removeDir(tmp);
    await b.close();
    await a.close();
  }
}

/** CPU ticks of a process from /proc (utime + stime), in ms. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // USER_HZ = 100 on Linux
}

async function telemetryFleet(): Promise<BenchRow[]> {
  const ids = Array.from({ length: SIM_HOSTS }, (_, i) => `s${i}`);
  const mq = await startMosquitto({
    hosts: Object.fromEntries(ids.map((h) => [h, `pw-${h}`])),
    controllers: { watcher: 'pw-w' },
  });
  const tmp = await makeTempDir('mvirt-bench-fleet10-');
  const children: { child: ChildProcess; ask(m: SimHostRequest): Promise<SimHostReply> }[] = [];
  let watcher: MqttClient | undefined;
  try {
    for (const id of ids) {
      const cred = path.join(tmp, `${id}.json`);
      writeFileSync(cred, JSON.stringify({ username: id, password: `pw-${id}` }));
      chmodSync(cred, 0o600);
      const child = fork(path.join(here, 'sim/fleet-host.ts'), [], {
        execArgv: ['--import', 'tsx'],
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      const waiting: ((r: SimHostReply) => void)[] = [];
      child.on('message', (r: SimHostReply) => waiting.shift()?.(r));
      const ask = (m: SimHostRequest): Promise<SimHostReply> =>
        new Promise((resolve) => {
          waiting.push(resolve);
          child.send(m);
        });
      children.push({ child, ask });
      await ask({
        type: 'start',
        hostId: id,
        vms: SIM_VMS,
        args: ['--uplink', `mqtt://127.0.0.1:${mq.hostsPort}`, '--uplink-credentials', cred],
      });
    }
    let received = 0;
    watcher = await mqtt.connectAsync(`mqtt://127.0.0.1:${mq.controllersPort}`, {
      username: 'watcher',
      password: 'pw-w',
    });
    watcher.on('message', () => received++);
    await watcher.subscribeAsync('mvirt/#', { qos: 0 });
    await sleep(2000); // retained state delivered, start-up settled
    const window = async (): Promise<{ perSec: number; host: number[]; broker: number }> => {
      const r0 = received;
      const b0 = cpuMs(mq.pid());
      const t0 = performance.now();
      const host = children.map((c) => c.ask({ type: 'cpu', ms: WINDOW_MS }));
      const cpus = (await Promise.all(host)).map((r) => (r.type === 'cpu' ? r.percent : NaN));
      const ms = performance.now() - t0;
      return {
        perSec: ((received - r0) * 1000) / ms,
        host: cpus,
        broker: ((cpuMs(mq.pid()) - b0) / ms) * 100,
      };
    };
    for (const c of children) await c.ask({ type: 'telemetry', intervalMs: 0 });
    const off = await window();
    for (const c of children) await c.ask({ type: 'telemetry', intervalMs: 1000 });
    await sleep(1000);
    const on = await window();
    return [
      {
        name: `${SIM_HOSTS} hosts × ${SIM_VMS} VMs on one Mosquitto, telemetry 1/s: messages/s to a subscriber of mvirt/#`,
        value: round(on.perSec, 0),
        unit: 'msg/s',
        note: `without telemetry ${round(off.perSec, 1)} msg/s (statuses, …)`,
      },
      {
        name: `the same: each mvirtd's CPU`,
        value: round(median(on.host), 2),
        unit: '% of a core',
        note: `median; range ${range(on.host)} (without telemetry: median ${round(median(off.host), 2)})`,
      },
      {
        name: 'the same: the Mosquitto CPU',
        value: round(on.broker, 2),
        unit: '% of a core',
        note: `without telemetry ${round(off.broker, 2)}`,
      },
    ];
  } finally {
    await watcher?.endAsync(true).catch(() => undefined);
    await Promise.all(children.map((c) => c.ask({ type: 'stop' }).catch(() => undefined)));
    await mq.close();
    await removeDir(tmp);
  }
}

export default async function fleetBench(emit: (rows: BenchRow[]) => void): Promise<BenchRow[]> {
  emit(await latency());
  return telemetryFleet();
}
