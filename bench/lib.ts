/**
 * Shared bench helpers: the row type every bench module returns, a mosquitto
 * launcher, an MQTT load generator that runs in its own process (so the broker
 * under test and the load never share an event loop, for the embedded broker
 * and for mosquitto alike), and round-trip latency measurement, including the
 * raw publish/subscribe echo that RPC benches compare against.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MqttClient } from 'mqtt';
import { connectController } from '../harness/connect.js';
import type { AgentSessions } from '../host/agent/sessions.js';
import type { Bus } from '../host/broker/types.js';
import type { ParamsOf, ReplyEnvelope } from '../protocol/rpc.js';
import type { RpcClient } from '../harness/client.js';

export interface BenchRow {
  name: string;
  value: number;
  unit: string;
  note?: string;
  /** A comparison figure (e.g. embedded ÷ mosquitto); checked against target. */
  ratio?: number;
  /** `>= 0.7` or `<= 1.5`. */
  target?: string;
}

/**
 * A bench module: resolves with its rows. A module measured in stages may
 * also hand finished rows to `emit` as it goes, so that a later stage that
 * fails does not take them down with it (run.ts prints them and the failure).
 */
export type BenchModule = (emit: (rows: BenchRow[]) => void) => Promise<BenchRow[]>;

/** Does `ratio` meet `target` (`>= x`, `<= x`, `> x`, `< x`)? null when not comparable. */
export function meetsTarget(ratio: number | undefined, target: string | undefined): boolean | null {
  if (ratio === undefined || target === undefined) return null;
  const m = /^\s*(>=|<=|>|<|≥|≤)\s*([0-9.]+)\s*$/.exec(target);
  if (!m) return null;
  const x = Number(m[2]);
  switch (m[1]) {
    case '>=':
    case '≥':
      return ratio >= x;
    case '<=':
    case '≤':
      return ratio <= x;
    case '>':
      return ratio > x;
    default:
      return ratio < x;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Debian's mosquitto on a free loopback port; resolves once it says it is
 * running. Its per-client QoS 1 limits (20 in flight, 1000 queued) are lifted:
 * with them it drops QoS 1 messages under this load, and the embedded broker
 * has no such limits either, so both are measured unbounded. TCP_NODELAY as
 * on the embedded broker's listener.
 */
export async function startMosquitto(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-mosquitto-'));
  const conf = path.join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'max_inflight_messages 0',
      'max_queued_messages 0',
      'set_tcp_nodelay true',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      '',
    ].join('\n'),
  );
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => reject(new Error(`mosquitto did not start:\n${log}`)), 10_000);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`mosquitto exited (${code}):\n${log}`)));
    child.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      if (/running/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.removeAllListeners('exit');
  child.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  // Never leave a broker behind when the bench process dies or exits early.
  const reap = (): void => void child.kill('SIGKILL');
  process.once('exit', reap);
  child.once('exit', () => process.off('exit', reap));
  child.stderr!.resume();
  return { url: `mqtt://127.0.0.1:${port}`, stop: () => stopChild(child) };
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

// ------------------------------------------------------------------ load

export interface LoadOptions {
  url: string;
  publishers: number;
  subscribers: number;
  /** Messages published in total (each is delivered to every subscriber). */
  messages: number;
  qos: 0 | 1;
  payloadBytes: number;
  /**
   * Most messages any subscriber may lag behind the publishers. Keeps both
   * brokers inside their queue limits (mosquitto drops QoS 1 messages beyond
   * max_queued_messages = 1000), so the figure is throughput, not loss.
   */
  window: number;
}

export interface LoadResult {
  published: number;
  delivered: number;
  ms: number;
  /** Deliveries per second (messages × subscribers ÷ time). */
  deliveredPerSec: number;
  publishedPerSec: number;
}

async function connectQuiet(url: string, clientId: string): Promise<MqttClient> {
  const c = await connectController(url, { clientId });
  // Without this, Nagle plus delayed ACKs cap a windowed load at window ÷ 40 ms.
  (c.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
  return c;
}

/** The load itself; runs in the load generator process. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const tag = Math.random().toString(36).slice(2, 8);
  const topic = (i: number) => `bench/${tag}/${i}`;
  const subs = await Promise.all(
    Array.from({ length: o.subscribers }, (_, i) => connectQuiet(o.url, `bsub-${tag}-${i}`)),
  );
  const pubs = await Promise.all(
    Array.from({ length: o.publishers }, (_, i) => connectQuiet(o.url, `bpub-${tag}-${i}`)),
  );
  await Promise.all(subs.map((s) => s.subscribeAsync(`bench/${tag}/#`, { qos: o.qos })));
  const received = subs.map(() => 0);
  const payload = Buffer.alloc(o.payloadBytes, 0x61);
  const expected = o.messages * o.subscribers;
  let sent = 0;
  let delivered = 0;
  let started = 0;

  const result = new Promise<LoadResult>((resolve, reject) => {
    let lastProgress = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > 15_000) {
        clearInterval(watchdog);
        const down = [...subs, ...pubs].filter((c) => !c.connected).length;
        reject(
          new Error(
            `load stalled: ${delivered}/${expected} delivered, ${sent} sent, ` +
              `received per subscriber ${received.join('/')}, ${down} clients disconnected`,
          ),
        );
      }
    }, 1000);
    const minReceived = (): number => Math.min(...received);
    // Refill in half-window batches: publishers write bursts, not a trickle of
    // one message per delivery.
    const pump = (): void => {
      let lag = sent - minReceived();
      if (lag > o.window / 2) return;
      while (sent < o.messages && lag < o.window) {
        pubs[sent % o.publishers]!.publish(topic(sent % o.publishers), payload, { qos: o.qos });
        sent++;
        lag++;
      }
    };
    subs.forEach((s, i) =>
      s.on('message', () => {
        received[i]!++;
        delivered++;
        lastProgress = Date.now();
        if (delivered === expected) {
          clearInterval(watchdog);
          const ms = performance.now() - started;
          resolve({
            published: sent,
            delivered,
            ms,
            deliveredPerSec: (delivered * 1000) / ms,
            publishedPerSec: (sent * 1000) / ms,
          });
        } else if (sent < o.messages) pump();
      }),
    );
    started = performance.now();
    pump();
  });
  try {
    return await result;
  } finally {
    await Promise.all([...subs, ...pubs].map((c) => c.endAsync(true)));
  }
}

const LIB_URL = new URL(import.meta.url).href;

/** Run `runLoad` in a child Node process and return its result. */
export function runLoadInChild(o: LoadOptions): Promise<LoadResult> {
  const code =
    `import { runLoad } from ${JSON.stringify(LIB_URL)};\n` +
    `const r = await runLoad(JSON.parse(process.env.MVIRT_BENCH_LOAD));\n` +
    `process.stdout.write(JSON.stringify(r));\n` +
    `process.exit(0);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...process.env, MVIRT_BENCH_LOAD: JSON.stringify(o) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) =>
    child.once('exit', (code) => {
      if (code === 0) resolve(JSON.parse(out) as LoadResult);
      else reject(new Error(`load generator failed (${code}): ${err.trim()}`));
    }),
  );
}

// ------------------------------------------------------------------ round trips

export interface LatencyStats {
  count: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  perSec: number;
}

export function latencyStats(samples: number[]): LatencyStats {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  const total = samples.reduce((a, b) => a + b, 0);
  return {
    count: samples.length,
    meanMs: total / samples.length,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    perSec: (samples.length * 1000) / total,
  };
}

/**
 * Sequential request/reply round trips: publish a request, wait for the next
 * message on replyTopic, repeat. The client is subscribed to replyTopic here.
 * Use the same function for an RPC method and for the raw echo so the two
 * figures differ only in what answers.
 */
export async function measureRoundTrips(o: {
  client: MqttClient;
  requestTopic: string;
  replyTopic: string;
  payload: (i: number) => Buffer | string;
  count: number;
  warmup?: number;
  timeoutMs?: number;
}): Promise<LatencyStats> {
  await o.client.subscribeAsync(o.replyTopic, { qos: 0 });
  let waiting: (() => void) | null = null;
  const onMessage = (topic: string): void => {
    if (topic !== o.replyTopic || !waiting) return;
    const w = waiting;
    waiting = null;
    w();
  };
  o.client.on('message', onMessage);
  const one = (i: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no reply on ${o.replyTopic} within ${o.timeoutMs ?? 5000} ms`)),
        o.timeoutMs ?? 5000,
      );
      waiting = () => {
        clearTimeout(timer);
        resolve();
      };
      o.client.publish(o.requestTopic, o.payload(i), { qos: 0 });
    });
  try {
    for (let i = 0; i < (o.warmup ?? 200); i++) await one(i);
    const samples: number[] = [];
    for (let i = 0; i < o.count; i++) {
      const t0 = performance.now();
      await one(i);
      samples.push(performance.now() - t0);
    }
    return latencyStats(samples);
  } finally {
    o.client.off('message', onMessage);
    await o.client.unsubscribeAsync(o.replyTopic);
  }
}

/**
 * The daemon-side half of the raw echo: an in-process Bus subscriber that
 * republishes each request's payload unchanged on replyTopic, as the RPC
 * layer would, minus the RPC layer.
 */
export async function startEchoResponder(
  bus: Bus,
  requestTopic: string,
  replyTopic: string,
): Promise<() => Promise<void>> {
  return bus.subscribe(requestTopic, (_topic, payload) => {
    void bus.publish(replyTopic, payload);
  });
}

/**
 * Raw publish/subscribe echo through a broker: controller (MQTT.js over TCP)
 * → broker → in-process responder → broker → controller. The RPC bench
 * divides its system.info round trip by this.
 */
export async function echoRoundTrip(o: {
  bus: Bus;
  url: string;
  count?: number;
  root?: string;
}): Promise<LatencyStats> {
  const tag = Math.random().toString(36).slice(2, 8);
  // A request under <root>/rpc/ so the controller ACL treats it like an RPC.
  const requestTopic = `${o.root ?? 'mvirt/bench'}/rpc/bench.echo${tag}`;
  const replyTopic = `bench/echo/${tag}/reply`;
  const stop = await startEchoResponder(o.bus, requestTopic, replyTopic);
  const client = await connectQuiet(o.url, `echo-${tag}`);
  try {
    return await measureRoundTrips({
      client,
      requestTopic,
      replyTopic,
      payload: (i) => `{"id":"e-${i}","replyTo":"${replyTopic}"}`,
      count: o.count ?? 2000,
    });
  } finally {
    await client.endAsync();
    await stop();
  }
}

// ---------------------------------------------------------------- small figures

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
};

export const round = (v: number, digits = 2): number => Math.round(v * 10 ** digits) / 10 ** digits;

/** `warmup` unmeasured runs, then the median of `rounds` runs of `once` (each returns its ms). */
export async function medianOf(
  once: () => Promise<number>,
  rounds: number,
  warmup = 3,
): Promise<number> {
  for (let i = 0; i < warmup; i++) await once();
  const ms: number[] = [];
  for (let i = 0; i < rounds; i++) ms.push(await once());
  return median(ms);
}

/** A reply's result; a failed reply throws with its code. */
export function ok<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) throw new Error(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

/** One `job.run {wait}` round trip in ms; a job that did not succeed throws. */
export async function timedJob(c: RpcClient, params: ParamsOf<'job.run'>): Promise<number> {
  const t0 = performance.now();
  const r = ok(await c.call('job.run', { wait: true, ...params }, { timeoutMs: 300_000 }));
  const ms = performance.now() - t0;
  if (r.state !== 'succeeded') throw new Error(`bench job ${r.state}: ${r.reason ?? ''}`);
  return ms;
}

/** Steal ticks and all ticks from /proc/stat: a busy (oversubscribed) host shows in a note. */
export function stealTicks(): { steal: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8')
    .split('\n')[0]!
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  return { steal: f[7] ?? 0, total: f.reduce((a, b) => a + b, 0) };
}

/**
 * The raw agent channel's rate, bytes per second one way (each byte also
 * comes back): pings of 256 KiB, 8 in flight, until `bytes` have gone.
 */
export async function pingRate(
  agents: AgentSessions,
  vmId: string,
  bytes: number,
): Promise<number> {
  const chunk = 256 * 1024;
  const payload = new Uint8Array(chunk).fill(97);
  let moved = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (moved < bytes) {
        moved += chunk;
        await agents.call(vmId, 'ping', { data: payload }, 120_000);
      }
    }),
  );
  return moved / ((performance.now() - t0) / 1000);
}
