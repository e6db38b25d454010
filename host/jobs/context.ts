/**
 * The one context the job manager's parts share: dependencies, the jobs held
 * in memory, the emitters, helpers, and every part's functions, bound late so
 * that the parts (transition.ts, placement.ts, agent-events.ts, recovery.ts)
 * call each other through it and never import each other.
 */
import { EventEmitter } from 'node:events';
import type { AgentSessions } from '../agent/sessions.js';
import type { Bus } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type { JobRepo } from '../store/index.js';
import type { Templates } from '../snapshots/templates.js';
import type { VmManager } from '../vm/manager.js';
import type { Exit, Hello } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import type { JobRecord, JobState, JobTarget, VmRecord } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import type { VmDestroyer } from './destroyer.js';
import type { OutputLog, OutputLogOptions } from './output.js';
import type { PoolManager } from './pools.js';
import type { Spares } from './spares.js';

export interface JobManagerOptions {
  output: OutputLogOptions;
  /** A job sent without a target goes to this pool when it exists. */
  defaultPool?: string;
  /** How long a job survives its agent being away (channel closed, VM alive). */
  agentGraceMs: number;
  /** Timeout of the exec request itself (not of the job). */
  execTimeoutMs: number;
  /** After a cancel, how long job.cancel waits for the job to end before answering. */
  cancelWaitMs: number;
  /** How long a finished job's retained state stays on its topic. */
  retainFinishedMs: number;
  /** Pause an agent's channel while this much of its output is still on the way to controllers. */
  outputHighBytes: number;
  outputLowBytes: number;
}

export const DEFAULT_JOB_OPTIONS: Omit<JobManagerOptions, 'output'> = {
  agentGraceMs: 60_000,
  execTimeoutMs: 30_000,
  cancelWaitMs: 15_000,
  retainFinishedMs: 10 * 60_000,
  outputHighBytes: 4 * 1024 * 1024,
  outputLowBytes: 1024 * 1024,
};

/** VM metadata key that ties an ephemeral VM to its job (survives a daemon restart). */
export const META_JOB = 'mvirt.job';

export type Phase = 'waiting' | 'placing' | 'running';

/** What is held in memory for a job that is not finished. */
export interface Active {
  id: string;
  target: JobTarget;
  phase: Phase;
  vmId: string | null;
  /** The VM was made for this job (ephemeral or pool): destroyed afterwards. */
  ownsVm: boolean;
  out: OutputLog | null;
  cancelRequested: boolean;
  /** A replay request is on its way to the agent (one at a time). */
  replaying: boolean;
  /** The exit record, kept while output before it is still missing. */
  exitRecord?: Exit;
  /** An exec has gone out: from now on a cancel must reach the guest. */
  execSent: boolean;
  /** The exec could not go out (no agent connected yet): the next hello sends it. */
  awaitingAgent?: boolean;
  graceTimer?: NodeJS.Timeout;
}

export interface JobManagerDeps {
  repo: JobRepo;
  destroyer: VmDestroyer;
  vms: VmManager;
  /** Each VM's agent session (host/agent/): exec, signal, hold, busy, and what agents say. */
  agents: AgentSessions;
  pools: PoolManager;
  /** Template snapshots: ephemeral VMs as forks instead of boots (host/snapshots/templates.ts). */
  templates?: Templates;
  /** Forks resumed ahead for jobs without a VM (spares.ts). */
  spares?: Spares;
  events: EventLog;
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  options: JobManagerOptions;
}

export type Level = 'audit' | 'warn' | 'error';

export interface JobContext extends Omit<JobManagerDeps, 'log'> {
  readonly log: MvirtLogger;
  /** Jobs not finished, in arrival order (the queue is the `waiting` ones). */
  readonly active: Map<string, Active>;
  /** Emits (jobId, record) when a job ends. */
  readonly ended: EventEmitter;
  /** Emits ('state', record, from) on every transition, for observers (metrics). */
  readonly changes: EventEmitter;
  /** Output bytes published but not yet delivered, per VM (backpressure). */
  readonly inFlight: Map<string, number>;
  closing: boolean;

  now(): string;
  /** The stored record with its queue position; JOB_NOT_FOUND otherwise. */
  record(id: string): JobRecord;
  waiting(): Active[];
  publishJob(rec: JobRecord): void;
  /** The VM, or undefined when it is gone. */
  safeGet(id: string): VmRecord | undefined;

  // transition.ts
  transition(
    id: string,
    to: JobState,
    reason: string | null,
    extra?: { exit?: Exit; level?: Level },
  ): JobRecord;
  destroyVm(vmId: string, why: string): void;
  republishQueue(): void;
  // placement.ts
  pump(): void;
  startOn(a: Active, vmId: string, owns: boolean): void;
  execute(a: Active, vmId: string, fromSeq?: number): Promise<void>;
  markRunning(a: Active): void;
  armGrace(a: Active, reason: string): void;
  openOutput(id: string, vmId: string): OutputLog;
  // agent-events.ts
  onHello(vmId: string, hello: Hello): void;
  sendCancel(a: Active): Promise<void>;
}

export function createJobContext(deps: JobManagerDeps): JobContext {
  const log = deps.log.child({ component: 'job' });
  const active = new Map<string, Active>();
  const ended = new EventEmitter();
  ended.setMaxListeners(0);
  const changes = new EventEmitter();
  changes.setMaxListeners(0);
  const waiting = (): Active[] => [...active.values()].filter((a) => a.phase === 'waiting');
  const base = {
    ...deps,
    log,
    active,
    ended,
    changes,
    inFlight: new Map<string, number>(),
    closing: false,
    now: (): string => new Date().toISOString(),
    waiting,
    record(id: string): JobRecord {
      const rec = deps.repo.get(id);
      if (!rec) throw new MvirtError('JOB_NOT_FOUND', `no job with id ${id}`);
      const i = waiting().findIndex((a) => a.id === id);
      return i < 0 ? rec : { ...rec, queuePosition: i + 1 };
    },
    publishJob(rec: JobRecord): void {
      deps.bus
        .publish(deps.topics.jobState(rec.jobId), JSON.stringify(rec), { retain: true, qos: 1 })
        .catch((err: unknown) => log.warn({ err, jobId: rec.jobId }, 'publish failed'));
    },
    safeGet(id: string): VmRecord | undefined {
      try {
        return deps.vms.get(id);
      } catch {
        return undefined;
      }
    },
  };
  // The parts' functions are bound by createJobManager before anything runs.
  return base as JobContext;
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
