/**
 * The guest agent executable on this host (a stand-in for the guest, where the
 * image bench measures the real thing): time from exec of
 * dist/agent/mvirt-agent to its `ready` on a broker over TCP, against the time
 * `node -e 0` takes to run and exit; plus `--version` (start and exit) and the
 * ping round trip through the agent. Target: start-to-connected ÷ node -e 0 ≤ 1.3.
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Aedes } from 'aedes';
import { decodeCbor, encodeCbor } from '../protocol/codec.js';
import { latencyStats, median, type BenchRow } from './lib.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(root, 'dist/agent/mvirt-agent');
const RUNS = 9;
const ROOT = 'mvirt/bench';

async function timeExit(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: 'ignore' });
  await once(child, 'exit');
  return performance.now() - t0;
}

export default async function agentBench(): Promise<BenchRow[]> {
  // Cached: a no-op when the inputs did not change.
  const b = spawnSync(process.execPath, [path.join(root, 'guest-agent/build.mjs')], {
    stdio: 'inherit',
    cwd: root,
  });
  if (b.status !== 0 || !existsSync(BIN)) throw new Error('guest-agent build failed');

  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-agent-'));
  const tokenPath = path.join(dir, 'token');
  writeFileSync(tokenPath, 'bench-token\n');
  const broker = await Aedes.createBroker();
  broker.authenticate = (_c, user, pass, cb) =>
    cb(null, pass?.toString() === 'bench-token' && !!user);
  // Nagle plus delayed ACKs would put 40 ms into every round trip.
  const server = net.createServer((s) => broker.handle(s.setNoDelay(true)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;

  const readyWaiters = new Map<string, () => void>();
  const replyWaiters = new Map<string, () => void>();
  broker.subscribe(
    `${ROOT}/agent/+/up/+`,
    (packet, cb) => {
      const [, , , vm, , kind] = packet.topic.split('/');
      if (kind === 'ready') readyWaiters.get(vm as string)?.();
      if (kind === 'reply') {
        const id = (decodeCbor(packet.payload as Buffer) as { id: string }).id;
        replyWaiters.get(id)?.();
      }
      cb();
    },
    () => undefined,
  );

  const startAgent = async (vm: string) => {
    const ready = new Promise<void>((r) => readyWaiters.set(vm, r));
    const t0 = performance.now();
    const child = spawn(BIN, [], {
      stdio: 'ignore',
      env: {
        PATH: process.env.PATH,
        MVIRT_VM: vm,
        MVIRT_ROOT: ROOT,
        MVIRT_CHANNEL: 'tcp',
        MVIRT_ADDR: `127.0.0.1:${port}`,
        MVIRT_TOKEN_FILE: tokenPath,
        MVIRT_INIT_UPTIME_FILE: path.join(dir, 'none'),
      },
    });
    const failed = once(child, 'exit').then(([code]) => {
      throw new Error(`agent exited (${String(code)}) before ready`);
    });
    await Promise.race([ready, failed]);
    failed.catch(() => undefined);
    return { ms: performance.now() - t0, child };
  };
  const stop = async (child: ReturnType<typeof spawn>) => {
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
  };

  try {
    const node: number[] = [];
    const agent: number[] = [];
    const version: number[] = [];
    // Interleaved, so that a busy moment on the machine hits both sides alike.
    for (let i = 0; i < RUNS; i++) {
      node.push(await timeExit(process.execPath, ['-e', '0']));
      const a = await startAgent(`vm-b${i}`);
      agent.push(a.ms);
      await stop(a.child);
      version.push(await timeExit(BIN, ['--version']));
    }

    // Ping round trips through a running agent (QoS 1 both ways).
    const { child } = await startAgent('vm-ping');
    const samples: number[] = [];
    const ping = async (i: number) => {
      const id = `p${i}`;
      const got = new Promise<void>((r) => replyWaiters.set(id, r));
      await new Promise<void>((resolve, reject) =>
        broker.publish(
          {
            cmd: 'publish',
            topic: `${ROOT}/agent/vm-ping/down/ping`,
            payload: encodeCbor({ id, data: Buffer.alloc(64) }),
            qos: 1,
            retain: false,
            dup: false,
          },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
      await got;
      replyWaiters.delete(id);
    };
    for (let i = 0; i < 50; i++) await ping(i);
    for (let i = 0; i < 500; i++) {
      const t0 = performance.now();
      await ping(1000 + i);
      samples.push(performance.now() - t0);
    }
    await stop(child);
    const lat = latencyStats(samples);

    const n = median(node);
    const a = median(agent);
    const v = median(version);
    return [
      { name: 'node -e 0 (host)', value: n, unit: 'ms', note: `median of ${RUNS}` },
      {
        name: 'agent exec → ready over TCP (host)',
        value: a,
        unit: 'ms',
        note: `median of ${RUNS}; V8 startup snapshot SEA`,
        ratio: a / n,
        target: '<= 1.3',
      },
      {
        name: 'agent --version (host)',
        value: v,
        unit: 'ms',
        ratio: v / n,
        note: 'start + exit, no I/O',
      },
      {
        name: 'agent ping round trip p50',
        value: lat.p50Ms,
        unit: 'ms',
        note: `p99 ${lat.p99Ms.toFixed(2)} ms`,
      },
    ];
  } finally {
    server.close();
    await new Promise<void>((r) => broker.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  }
}
