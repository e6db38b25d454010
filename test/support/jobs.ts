/**
 * Job tests against an in-process mvirtd whose VMs run the real agent core
 * (fake backend, agent mode 'real'): a daemon, an RPC client, and a recorder
 * subscribed to every job, VM and pool topic from the start, so a test awaits
 * what the daemon publishes (past or future) instead of sleeping.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { JobRecord, OutputChunk, ParamsOf, VmRecord } from '../../protocol/rpc.js';
import { createLogger, type MvirtLogger } from '../../host/log.js';
import {
  record,
  result,
  rpcClient,
  WAIT_MS,
  type Recorder,
  type RpcClient,
} from '../../harness/client.js';
import { startTestDaemon, type TestDaemon } from '../../harness/daemon.js';
import { createFakeHypervisor, killFakes, type FakeHypervisor } from '../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../harness/paths.js';

export { errorOf, result, TERMINAL, WAIT_MS } from '../../harness/client.js';

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
  run(params: ParamsOf<'job.run'>): Promise<JobRecord>;
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

/**
 * The exceptions logged so far, taken: a test that provokes a race asserts
 * right there that none was logged (cleanupAll would report it only at the end).
 */
export function takeErrorLogs(): string[] {
  return errorLogs.splice(0);
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
  const c = await rpcClient(d);
  const rec = await record(d);
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
      const vm = result(await c.call('vm.start', { vm: name, wait: true }));
      assert.equal(vm.state, 'ready');
      return vm;
    },
    async run(params) {
      return result(await c.call('job.run', params, { timeoutMs: WAIT_MS }));
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

/** A job's exit record as an agent sends it (exit 0): what a hostile guest forges. */
export const exitRecord = (jobId: string, seq = 0) => ({
  jobId,
  seq,
  exitCode: 0,
  signal: null,
  oomKilled: false,
  timedOut: false,
  startedAt: 1,
  finishedAt: 2,
});

export const open = (file: string): Promise<void> => writeFile(file, '');

/** Concatenated text of a job's live output, by stream (in seq order; base64 chunks decoded). */
export function text(chunks: OutputChunk[], stream?: 'stdout' | 'stderr'): string {
  return Buffer.concat(
    [...chunks]
      .sort((a, b) => a.seq - b.seq)
      .filter((c) => !stream || c.stream === stream)
      .map((c) => Buffer.from(c.data, c.encoding === 'base64' ? 'base64' : 'utf8')),
  ).toString('utf8');
}
