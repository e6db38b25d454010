/**
 * Guest floods against a real mvirtd (issue 12), for the integration test
 * (test/integration/guest-flood.test.ts) and the bench (bench/flood.ts): one
 * VM runs the hostile job of harness/hostile-guest.ts while another VM
 * (the bystander) and a controller go on working, and mvirtd's memory and CPU
 * are read from /proc. Each flood yields its figures; judging them is the
 * caller's part.
 *
 * A flood on the agent channel kills the flooding VM's agent; "usable again"
 * means here that its own agent comes back without a VM restart (init
 * respawns it once the hostile job lets go of the port: hostile-guest.sh)
 * and the VM runs a job. When it does not, the VM is restarted so that the
 * next flood has a VM to run on, and the figures say so.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { MqttClient } from 'mqtt';
import type { VmRecord } from '../protocol/rpc.js';
import { TERMINAL_JOB_STATES } from '../protocol/states.js';
import { RawClient } from './broker-raw.js';
import {
  HOSTILE_CONSOLE_LINE,
  HOSTILE_LOG,
  hostileJob,
  parseHostileLog,
  type HostileKind,
  type HostileReport,
} from './hostile-guest.js';
import { result as ok, type RpcClient } from './client.js';
import { connectController, nextClientId, type DaemonAddress } from './connect.js';
import { ownAgentBack, type StateWatch } from './state-watch.js';

// ------------------------------------------------------------------ /proc

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

/** utime + stime of a process, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is field 3.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** RSS sampled every `everyMs`; `onSample` may act on a runaway (the safety valve). */
export function sampleRss(pid: number, everyMs = 200, onSample?: (kib: number) => void) {
  let peak = rssKiB(pid);
  const timer = setInterval(() => {
    if (!alive(pid)) return;
    const v = rssKiB(pid);
    peak = Math.max(peak, v);
    onSample?.(v);
  }, everyMs);
  return {
    get peakKiB() {
      return peak;
    },
    stop: () => clearInterval(timer),
  };
}

// ------------------------------------------------------------------ figures

export const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? NaN
    : s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * Samples of `once` (each returns its ms), one after another with `gapMs`
 * between them, until `untilMs` (performance.now()), at least `min`. Paced:
 * back-to-back requests would load mvirtd more than the flood they measure.
 */
async function sampleUntil(
  once: () => Promise<number>,
  o: { untilMs: number; min: number; gapMs: number },
): Promise<number[]> {
  const ms: number[] = [];
  for (;;) {
    ms.push(await once());
    if (ms.length >= o.min && performance.now() + o.gapMs >= o.untilMs) return ms;
    await new Promise((r) => setTimeout(r, o.gapMs));
  }
}

/** Pace of the samples: a /bin/true job every 250 ms, a controller request every 50 ms. */
const JOB_GAP_MS = 250;
const RPC_GAP_MS = 50;

export const JOB_MS = 300_000;

/** One `/bin/true` job on `vm`, waited for; its round trip in ms (a job that did not succeed throws). */
export async function trueJob(c: RpcClient, vm: string): Promise<number> {
  const t0 = performance.now();
  const r = ok(
    await c.call('job.run', { vm, argv: ['/bin/true'], wait: true }, { timeoutMs: JOB_MS }),
  );
  if (r.state !== 'succeeded') throw new Error(`/bin/true on ${vm}: ${r.state} (${r.reason})`);
  return performance.now() - t0;
}

/** A controller's request round trip, alternating system.info and vm.list. */
let rpcTurn = 0;
export async function controllerCall(c: RpcClient): Promise<number> {
  const t0 = performance.now();
  if (rpcTurn++ % 2 === 0) ok(await c.call('system.info', {}, { timeoutMs: 120_000 }));
  else ok(await c.call('vm.list', {}, { timeoutMs: 120_000 }));
  return performance.now() - t0;
}

export interface Idle {
  /** Medians … */
  jobMs: number;
  rpcMs: number;
  /** … and means (a stall shows in the mean, not the median). */
  jobMeanMs: number;
  rpcMeanMs: number;
}

/** Latencies with every VM idle: the bystander's /bin/true job and controller requests (medians). */
export async function measureIdle(c: RpcClient, bystander: string): Promise<Idle> {
  for (let i = 0; i < 2; i++) await trueJob(c, bystander);
  const jobs = await sampleUntil(() => trueJob(c, bystander), {
    untilMs: 0,
    min: 12,
    gapMs: JOB_GAP_MS,
  });
  for (let i = 0; i < 10; i++) await controllerCall(c);
  const rpc = await sampleUntil(() => controllerCall(c), {
    untilMs: 0,
    min: 60,
    gapMs: RPC_GAP_MS,
  });
  return { jobMs: median(jobs), rpcMs: median(rpc), jobMeanMs: mean(jobs), rpcMeanMs: mean(rpc) };
}

/** A service VM, created and started; its record once ready. */
export async function startServiceVm(
  c: RpcClient,
  name: string,
  bootMs: number,
): Promise<VmRecord> {
  ok(await c.call('vm.create', { name, memoryMiB: 256 }));
  const vm = ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: bootMs }));
  if (vm.state !== 'ready') throw new Error(`VM ${name} is ${vm.state}, not ready`);
  return vm;
}

// ------------------------------------------------------------------ one flood

export interface FloodContext {
  c: RpcClient;
  d: DaemonAddress & { pid: number; tcpUrl: string | null };
  states: StateWatch;
  bystander: VmRecord;
  /** The flooding VM; replaced when it had to be restarted. */
  flooder: VmRecord;
  idle: Idle;
  seconds: number;
  bootMs: number;
}

export interface FloodOptions {
  kind: HostileKind;
  /** During the flood a controller subscribed to `#` stops reading its socket. */
  stuckSubscriber?: boolean;
  /**
   * 'whole': latencies sampled over the whole flood, CPU too (the test);
   * 'split': CPU over the first half with nothing else going on, latencies
   * over the second half (the bench: the samples cost mvirtd CPU too).
   */
  windows?: 'whole' | 'split';
  /** Beyond this growth the flooding VM is killed (the host must not run out of memory). */
  safetyMiB?: number;
}

export interface FloodFigures {
  name: string;
  kind: HostileKind;
  seconds: number;
  rssBeforeMiB: number;
  rssPeakMiB: number;
  rssGrowthMiB: number;
  /** mvirtd's CPU over its window, in % of one core. */
  cpuPercent: number;
  /** The other VM's /bin/true jobs during the flood, ms. */
  jobMs: number[];
  /** Their median ÷ the idle median. */
  jobRatio: number;
  /** Their mean ÷ the idle mean: a stall (one very slow job) shows here. */
  jobMeanRatio: number;
  /** Controller requests (system.info, vm.list) during the flood, ms. */
  rpcMs: number[];
  rpcRatio: number;
  rpcMeanRatio: number;
  audit: { before: number; missing: number };
  /** The guest's own report (packets written, sessions begun). */
  guest: HostileReport | null;
  /** Bytes of one flooded packet. */
  packetBytes: number;
  /** console: what a reading console subscriber received. */
  console?: { messages: number; bytes: number };
  /** stuckSubscriber: whether mvirtd disconnected it. */
  stuck?: { disconnected: boolean };
  daemonAlive: boolean;
  /** The flooding VM's agent came back by itself and the VM ran a job. */
  usable: boolean;
  usableNote: string;
  safetyTripped: boolean;
}

const MiB = (kib: number): number => Math.round((kib / 1024) * 10) / 10;

async function auditIds(c: RpcClient): Promise<Set<number>> {
  const r = ok(
    await c.call('events.query', { level: 'audit', limit: 10_000 }, { timeoutMs: 120_000 }),
  );
  return new Set(r.events.map((e) => e.id));
}

async function guestReport(c: RpcClient, vm: string): Promise<HostileReport | null> {
  const r = await c.call(
    'job.run',
    { vm, argv: ['cat', HOSTILE_LOG], wait: true },
    { timeoutMs: JOB_MS },
  );
  return r.ok && r.result.state === 'succeeded' ? parseHostileLog(r.result.stdout ?? '') : null;
}

/** A controller subscribed to the flooding VM's console, counting what it reads. */
async function consoleCounter(d: DaemonAddress, vmId: string) {
  const client: MqttClient = await connectController(d.url, { clientId: nextClientId('console') });
  const topic = `${d.root}/vm/${vmId}/console/out`;
  let messages = 0;
  let bytes = 0;
  let sawLine: () => void = () => undefined;
  const line = new Promise<void>((resolve) => (sawLine = resolve));
  client.on('message', (t, payload) => {
    if (t !== topic) return;
    messages++;
    bytes += payload.length;
    if (payload.includes(HOSTILE_CONSOLE_LINE)) sawLine();
  });
  await client.subscribeAsync(topic, { qos: 0 });
  return {
    line,
    counts: () => ({ messages, bytes }),
    close: () => client.endAsync(true),
  };
}

/** A controller on the TCP listener subscribed to `#` that then never reads again. */
async function stuckSubscriber(tcpUrl: string): Promise<RawClient> {
  const raw = await RawClient.connect(Number(new URL(tcpUrl).port));
  const code = await raw.handshake({ clientId: nextClientId('stuck'), keepalive: 0 });
  if (code !== 0) throw new Error(`stuck subscriber refused (CONNACK ${code})`);
  const granted = await raw.subscribe(['#']);
  if (!granted || granted[0] === 0x80) throw new Error('stuck subscriber: # refused');
  raw.socket.pause();
  return raw;
}

/**
 * Whether mvirtd dropped the stuck subscriber: a paused socket cannot see its
 * end, so it reads again, through what the kernel still holds, up to the
 * close (or, if it was not dropped, until the bound).
 */
async function wasDropped(raw: RawClient): Promise<boolean> {
  raw.socket.resume();
  const dropped = await Promise.race([
    raw.closed.then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), 30_000).unref()),
  ]);
  raw.destroy();
  return dropped;
}

const timeoutAfter = (ms: number, what: string): Promise<never> =>
  new Promise((_r, reject) => setTimeout(() => reject(new Error(what)), ms).unref());

/** Run one flood from the flooding VM and measure it. */
export async function runFlood(ctx: FloodContext, o: FloodOptions): Promise<FloodFigures> {
  const { c, d, states, seconds } = ctx;
  const name = o.stuckSubscriber ? `${o.kind} + stuck subscriber` : o.kind;
  const flooder = ctx.flooder;
  const auditBefore = await auditIds(c);

  const rssBefore = rssKiB(d.pid);
  let safetyTripped = false;
  const sampler = sampleRss(d.pid, 200, (kib) => {
    if (safetyTripped || kib - rssBefore < (o.safetyMiB ?? 1536) * 1024) return;
    safetyTripped = true;
    try {
      if (flooder.pid) process.kill(flooder.pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  });
  const consoleSub = o.kind === 'console' ? await consoleCounter(d, flooder.id) : null;
  const stuck = o.stuckSubscriber ? await stuckSubscriber(d.tcpUrl!) : null;
  if (!flooder.agentVersion) throw new Error(`VM ${flooder.name} has no agent version`);

  let target: string | undefined;
  if (o.kind === 'output') {
    target = ok(await c.call('job.run', { vm: flooder.id, argv: ['sleep', '100000'] })).jobId;
    await states.job(target, ['running'], JOB_MS);
  }
  const statesBefore = states.vmStates(flooder.id).length;
  const job = hostileJob({
    kind: o.kind,
    vmId: flooder.id,
    root: d.root,
    seconds,
    ...(target ? { targetJobId: target } : {}),
  });
  const hostile = ok(
    await c.call('job.run', {
      vm: flooder.id,
      argv: job.argv,
      env: job.env,
      timeoutMs: (seconds + 300) * 1000,
    }),
  ).jobId;

  // The flood has begun: the console shows the line, or the hostile hello
  // (which does not list the hostile job) made mvirtd give that job up; the
  // control spins once its job runs.
  const STARTED_MS = 180_000;
  const agentKept = o.kind === 'console' || o.kind === 'spin';
  if (consoleSub) {
    await Promise.race([consoleSub.line, timeoutAfter(STARTED_MS, 'no console flood seen')]);
  } else if (o.kind === 'spin') {
    await states.job(hostile, ['running'], STARTED_MS);
  } else {
    const rec = await states.job(hostile, TERMINAL_JOB_STATES, STARTED_MS);
    if (rec.state !== 'lost') {
      const report = await guestReport(c, flooder.id);
      throw new Error(
        `the hostile job ended ${rec.state} (${rec.reason}) instead of taking the channel over:\n${report?.text ?? '(no guest log)'}`,
      );
    }
  }
  const t0 = performance.now();
  const cpu0 = cpuSeconds(d.pid);
  const end = t0 + seconds * 1000 - 1000;
  const split = o.windows === 'split';
  const cpuEnd = split ? t0 + (seconds * 1000) / 2 : end;
  const cpuDone = new Promise<number>((resolve) =>
    setTimeout(
      () => resolve(alive(d.pid) ? ((cpuSeconds(d.pid) - cpu0) * 1000) / (cpuEnd - t0) : NaN),
      cpuEnd - t0,
    ),
  );
  if (split) await cpuDone;
  const [jobMs, rpcMs] = await Promise.all([
    sampleUntil(() => trueJob(c, ctx.bystander.id), { untilMs: end, min: 3, gapMs: JOB_GAP_MS }),
    sampleUntil(() => controllerCall(c), { untilMs: end, min: 5, gapMs: RPC_GAP_MS }),
  ]);
  const cpuPercent = (await cpuDone) * 100;

  // Over: the guest's own agent is back (its hello carries its own version).
  let usable = false;
  let usableNote = '';
  const OVER_MS = seconds * 1000 + 240_000;
  try {
    if (safetyTripped) throw new Error('the flooding VM was killed (safety valve)');
    if (agentKept) {
      const rec = await states.job(hostile, TERMINAL_JOB_STATES, OVER_MS);
      if (rec.state !== 'succeeded') throw new Error(`the ${o.kind} job ended ${rec.state}`);
    } else {
      await ownAgentBack(states, flooder, statesBefore, OVER_MS);
    }
    await trueJob(c, flooder.id);
    usable = true;
    usableNote = agentKept ? 'agent untouched; ran a job' : 'its agent came back; ran a job';
  } catch (err) {
    usableNote = err instanceof Error ? err.message : String(err);
  }
  const guest = agentKept || !usable ? null : await guestReport(c, flooder.id);
  sampler.stop();
  const consoleCounts = consoleSub?.counts();
  await consoleSub?.close();
  const stuckDropped = stuck ? await wasDropped(stuck) : false;

  const daemonAlive = alive(d.pid);
  let missing = auditBefore.size;
  if (daemonAlive) {
    const after = await auditIds(c);
    missing = [...auditBefore].filter((id) => !after.has(id)).length;
  }
  if (!usable && daemonAlive) ctx.flooder = await restartVm(ctx, flooder);

  return {
    name,
    kind: o.kind,
    seconds,
    rssBeforeMiB: MiB(rssBefore),
    rssPeakMiB: MiB(sampler.peakKiB),
    rssGrowthMiB: MiB(sampler.peakKiB - rssBefore),
    cpuPercent: Math.round(cpuPercent * 10) / 10,
    jobMs: jobMs.map(Math.round),
    jobRatio: median(jobMs) / ctx.idle.jobMs,
    jobMeanRatio: mean(jobMs) / ctx.idle.jobMeanMs,
    rpcMs: rpcMs.map((x) => Math.round(x * 10) / 10),
    rpcRatio: median(rpcMs) / ctx.idle.rpcMs,
    rpcMeanRatio: mean(rpcMs) / ctx.idle.rpcMeanMs,
    audit: { before: auditBefore.size, missing },
    guest,
    packetBytes: job.packetBytes,
    ...(consoleCounts ? { console: consoleCounts } : {}),
    ...(stuck ? { stuck: { disconnected: stuckDropped } } : {}),
    daemonAlive,
    usable,
    usableNote,
    safetyTripped,
  };
}

/** A flooding VM that did not come back by itself: stopped (killed) and started again. */
async function restartVm(ctx: FloodContext, vm: VmRecord): Promise<VmRecord> {
  const { c } = ctx;
  const cur = ok(await c.call('vm.get', { vm: vm.id }));
  if (cur.state !== 'stopped' && cur.state !== 'failed')
    ok(await c.call('vm.kill', { vm: vm.id }, { timeoutMs: 60_000 }));
  return ok(await c.call('vm.start', { vm: vm.id, wait: true }, { timeoutMs: ctx.bootMs }));
}

/** One line per flood, for logs and reports. */
export function describe(f: FloodFigures): string {
  const g = f.guest
    ? ` guest sent ${f.guest.sent} packets (${((f.guest.sent * f.packetBytes) / 1048576).toFixed(1)} MiB; by 5 s: ${f.guest.progress.join('/')}) in ${f.guest.sessions} session(s);`
    : '';
  const con = f.console
    ? ` console subscriber got ${f.console.messages} msgs / ${f.console.bytes} B;`
    : '';
  const st = f.stuck
    ? ` stuck subscriber ${f.stuck.disconnected ? 'disconnected' : 'still connected'};`
    : '';
  return (
    `${f.name} (${f.seconds} s): RSS ${f.rssBeforeMiB} → peak ${f.rssPeakMiB} MiB (+${f.rssGrowthMiB}); ` +
    `CPU ${f.cpuPercent} %; other VM's job p50 ${Math.round(median(f.jobMs))} ms ×${f.jobRatio.toFixed(2)}, ` +
    `mean ×${f.jobMeanRatio.toFixed(2)}, max ${Math.max(...f.jobMs)} ms (n=${f.jobMs.length}); ` +
    `controller p50 ${median(f.rpcMs).toFixed(1)} ms ×${f.rpcRatio.toFixed(2)}, mean ×${f.rpcMeanRatio.toFixed(2)}, ` +
    `max ${Math.max(...f.rpcMs)} ms (n=${f.rpcMs.length}); ` +
    `audit ${f.audit.before} before, ${f.audit.missing} missing;${g}${con}${st} ` +
    `usable: ${f.usable ? 'yes' : 'NO'} (${f.usableNote})${f.safetyTripped ? '; SAFETY VALVE' : ''}${f.daemonAlive ? '' : '; MVIRTD DEAD'}`
  );
}
