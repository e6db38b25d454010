/**
 * Job tests against an in-process mvirtd whose VMs run the real agent core
 * (fake backend, agent mode 'real'): a daemon, an RPC client, and a recorder
 * subscribed to every job, VM and pool topic from the start, so a test awaits
 * what the daemon publishes (past or future) instead of sleeping.
 */
import { brokerOptions } from '../../protocol/client.js';
import { adminLogin } from './test-admin.js';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import type {
  JobRecord,
  JobState,
  OutputChunk,
  PoolRecord,
  ReplyEnvelope,
  VmRecord,
} from '../../protocol/rpc.js';
import { createLogger, type MvirtLogger } from '../../host/log.js';
import { createFakeHypervisor, killFakes, type FakeHypervisor } from './daemon-fakes.js';
import {
  makeTempDir,
  removeDir,
  rpcClient,
  startTestDaemon,
  type RpcClient,
  type TestDaemon,
} from './daemon-harness.js';

export const WAIT_MS = 15_000;
export const TERMINAL: JobState[] = ['succeeded', 'failed', 'timed_out', 'cancelled', 'lost'];

export function result<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

export function errorOf(r: ReplyEnvelope): { code: string; message: string } {
  assert.equal(r.ok, false, `expected an error, got ${JSON.stringify(r)}`);
  return r.ok ? { code: '', message: '' } : r.error;
}

/** Await a condition that follows no event we can subscribe to (a process leaving /proc). */
export function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (cond()) return resolve();
      if (performance.now() - t0 > timeoutMs) return reject(new Error(`${what}: not in time`));
      setTimeout(check, 10);
    };
    check();
  });
}

interface Seen {
  topic: string;
  payload: Buffer;
}

/** Everything published on the job, VM and pool topics since the daemon started. */
export interface Recorder {
  readonly seen: Seen[];
  /** Job records published on P/<host>/job/<id>/state, oldest first. */
  jobStates(jobId: string): JobRecord[];
  /** Chunks published on P/<host>/job/<id>/output, in arrival order. */
  outputs(jobId: string): OutputChunk[];
  /** VM records on P/<host>/vm/<id>/state; null for the empty retained message of a delete. */
  vmStates(vmId: string): (VmRecord | null)[];
  /** Every VM state message, in arrival order. */
  allVmStates(): VmRecord[];
  poolStates(name: string): (PoolRecord | null)[];
  /** Resolve with fn()'s value once it is not undefined (checked on every message). */
  until<T>(fn: () => T | undefined, what: string, timeoutMs?: number): Promise<T>;
  /** The job's first published record in one of `states`. */
  job(jobId: string, states: JobState[], timeoutMs?: number): Promise<JobRecord>;
  close(): Promise<void>;
}

export async function record(url: string, root: string): Promise<Recorder> {
  // `unix://` (the test daemon's anonymous socket) or TCP as the test admin.
  const b = brokerOptions(url);
  const opts = {
    ...b.opts,
    ...(b.url ? adminLogin() : {}),
    clientId: `rec-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    protocolVersion: 4 as const,
    reconnectPeriod: 0,
  };
  const client = await (b.url ? mqtt.connectAsync(b.url, opts) : mqtt.connectAsync(opts));
  const seen: Seen[] = [];
  const checks = new Set<() => void>();
  client.on('message', (topic, payload) => {
    seen.push({ topic, payload: Buffer.from(payload) });
    for (const c of [...checks]) c();
  });
  await client.subscribeAsync(
    [`${root}/job/+/state`, `${root}/job/+/output`, `${root}/vm/+/state`, `${root}/pool/+/state`],
    { qos: 1 },
  );
  const on = (topic: string): Seen[] => seen.filter((s) => s.topic === topic);
  const json = <T>(s: Seen): T | null =>
    s.payload.length === 0 ? null : (JSON.parse(s.payload.toString()) as T);

  const rec: Recorder = {
    seen,
    jobStates: (id) => on(`${root}/job/${id}/state`).map((s) => json<JobRecord>(s)!),
    outputs: (id) => on(`${root}/job/${id}/output`).map((s) => json<OutputChunk>(s)!),
    vmStates: (id) => on(`${root}/vm/${id}/state`).map((s) => json<VmRecord>(s)),
    allVmStates: () =>
      seen
        .filter((s) => s.topic.startsWith(`${root}/vm/`) && s.payload.length > 0)
        .map((s) => json<VmRecord>(s)!),
    poolStates: (name) => on(`${root}/pool/${name}/state`).map((s) => json<PoolRecord>(s)),
    until<T>(fn: () => T | undefined, what: string, timeoutMs = WAIT_MS): Promise<T> {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const v = fn();
          if (v === undefined) return;
          checks.delete(check);
          clearTimeout(timer);
          resolve(v);
        };
        const timer = setTimeout(() => {
          checks.delete(check);
          reject(new Error(`${what}: not seen within ${timeoutMs} ms`));
        }, timeoutMs);
        checks.add(check);
        check();
      });
    },
    job(jobId, states, timeoutMs) {
      return rec.until(
        () => rec.jobStates(jobId).find((r) => states.includes(r.state)),
        `job ${jobId} ${states.join('|')} (seen: ${rec
          .jobStates(jobId)
          .map((r) => r.state)
          .join(',')})`,
        timeoutMs,
      );
    },
    close: () => client.endAsync(),
  };
  return rec;
}

export interface JobDaemon {
  d: TestDaemon;
  c: RpcClient;
  rec: Recorder;
  hv: FakeHypervisor;
  dataDir: string;
  /** A scratch folder for go-files and the like (removed at cleanup). */
  tmp: string;
  /** Create and start a service VM; resolves once it is ready. */
  serviceVm(name: string): Promise<VmRecord>;
  run(params: Record<string, unknown>): Promise<JobRecord>;
  /** Stop the daemon only (VMs keep running), e.g. to start another on the same data dir. */
  stopDaemon(): Promise<void>;
}

const cleanups: (() => Promise<void> | void)[] = [];
/** Exceptions the daemons of this file logged at error level: none is expected. */
const errorLogs: string[] = [];

/**
 * A logger that keeps the exceptions the daemon logs at error level (a
 * swallowed exception shows up nowhere else; error-level events such as a
 * failed boot have no `err` and are expected) and prints everything at
 * MVIRT_TEST_LOG's level if set.
 */
function errorKeepingLogger(): MvirtLogger {
  const echo = process.env.MVIRT_TEST_LOG;
  return createLogger({
    level: echo ?? 'error',
    destination: {
      write(line: string) {
        const l = JSON.parse(line) as { level: number; err?: unknown };
        if (l.level >= 50 && l.err !== undefined) errorLogs.push(line);
        if (echo) process.stderr.write(line);
      },
    },
  });
}

/** Undo everything the job daemons of this file started (call from `after`); fails on logged errors. */
export async function cleanupAll(): Promise<void> {
  for (const c of cleanups.splice(0).reverse()) await c();
  assert.deepEqual(errorLogs.splice(0), [], 'the daemon logged no error');
}

export async function startJobDaemon(
  o: { args?: string[]; dataDir?: string; hv?: FakeHypervisor } = {},
): Promise<JobDaemon> {
  const hv = o.hv ?? createFakeHypervisor({ agent: 'real' });
  const dataDir = o.dataDir ?? (await makeTempDir('mvirt-jobs-'));
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'mvirt-jobtmp-'));
  const d = await startTestDaemon({
    hypervisors: [hv],
    dataDir,
    args: o.args ?? [],
    log: errorKeepingLogger(),
  });
  const c = await rpcClient(d.url, d.root);
  const rec = await record(d.url, d.root);
  let stopped = false;
  const stopDaemon = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await rec.close().catch(() => undefined);
    await c.close().catch(() => undefined);
    await d.stop();
  };
  cleanups.push(async () => {
    await stopDaemon();
    killFakes(hv);
    await rm(tmp, { recursive: true, force: true });
    if (!o.dataDir) await removeDir(dataDir);
  });
  return {
    d,
    c,
    rec,
    hv,
    dataDir,
    tmp,
    async serviceVm(name) {
      result(await c.call('vm.create', { name }));
      const vm = result(await c.call('vm.start', { vm: name, wait: true })) as VmRecord;
      assert.equal(vm.state, 'ready');
      return vm;
    },
    async run(params) {
      return result(await c.call('job.run', params, { timeoutMs: WAIT_MS })) as JobRecord;
    },
    stopDaemon,
  };
}

/** argv of a job that prints `before`, waits until `file` exists, then prints `after`. */
export function gated(file: string, before = 'start', after = 'end'): string[] {
  return [
    'sh',
    '-c',
    `echo ${before}; until [ -e "$1" ]; do sleep 0.01; done; echo ${after}`,
    'sh',
    file,
  ];
}

export const open = (file: string): Promise<void> => writeFile(file, '');

/** Concatenated text of a job's live output, by stream (in seq order). */
export function text(chunks: OutputChunk[], stream?: 'stdout' | 'stderr'): string {
  return [...chunks]
    .sort((a, b) => a.seq - b.seq)
    .filter((c) => !stream || c.stream === stream)
    .map((c) => c.data)
    .join('');
}
