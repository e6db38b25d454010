/**
 * The one context the VM manager's parts share: its dependencies, the
 * in-memory state (live VMs, last boot failures, the state emitter, the
 * per-VM locks) and every part's functions, bound late so that the parts
 * (transition.ts, boot.ts, exit.ts, stop.ts, recovery.ts, agent-events.ts,
 * ops.ts) call each other through it and never import each other.
 */
import type { PlanBuilder } from '../plan.js';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import type { AgentSessions } from '../agent/sessions.js';
import type { Broker } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { HypervisorRegistry } from '../hypervisors/index.js';
import type { RunningVm } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';
import type { Network } from '../network/index.js';
import type { Store } from '../store/index.js';
import { MvirtError, type ErrorCode } from '../../protocol/errors.js';
import type { NetworkSpec, VmKind, VmRecord, VmState } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import type { ImageStore } from './images.js';
import type { Live } from './live.js';
import type { VolumeAttach } from '../volumes/attach.js';
import type { VolumeFiles } from '../volumes/files.js';
import type { SnapshotFiles } from '../snapshots/files.js';
import type { ForkVolumes } from './fork-disks.js';
import type { YieldingMode, YieldingVms } from './yielding.js';

export interface VmManagerOptions {
  /** `<data-dir>/vm`: one folder per VM id. */
  vmDir: string;
  defaults: { vcpus: number; memoryMiB: number; image: string; backend: string };
  limits: { vcpus: number; memoryMiB: number; maxVms: number };
  bootTimeoutMs: number;
  /** Graceful stop budget when `vm.stop` gives no timeoutMs. */
  stopTimeoutMs: number;
  /** After SIGTERM, how long before SIGKILL. */
  termTimeoutMs: number;
  /** After SIGKILL, how long before giving up with an error. */
  killTimeoutMs: number;
  /** Timeout of requests to the agent (power, …). */
  agentCallTimeoutMs: number;
  consoleLogBytes: number;
  /** How often agents report telemetry (passed on the kernel command line); default: the agent's. */
  telemetryMs?: number;
}

export interface CreateVmParams {
  name: string;
  image?: string;
  vcpus?: number;
  memoryMiB?: number;
  kind?: VmKind;
  backend?: string;
  network?: NetworkSpec;
  metadata?: Record<string, string>;
  userData?: string;
  metaData?: string;
  networkConfig?: string;
  /** Volumes attached at every boot, in order (vm/disks.ts). */
  disks?: { volume: string; readOnly?: boolean }[];
}

export interface VmManagerDeps {
  store: Store;
  events: EventLog;
  broker: Pick<Broker, 'publish' | 'subscribe'>;
  hypervisors: HypervisorRegistry;
  images: ImageStore;
  network: Network;
  /**
   * Volumes as disks; without it vm.create refuses disks. `copies`: the
   * volume manager's part forks of snapshots with volumes need (fork-disks.ts).
   */
  volumes?: { attach: VolumeAttach; files: VolumeFiles; copies?: ForkVolumes };
  /** Each VM's agent session (host/agent/). */
  agents: AgentSessions;
  /** VM snapshots' folders (forks resume from them). */
  snapshotFiles: SnapshotFiles;
  /** Whether a client subscribes to a topic now (the broker's hasSubscriber); default: always. */
  listening?: (topic: string) => boolean;
  topics: Topics;
  log: MvirtLogger;
  options: VmManagerOptions;
}

export type Size = { vcpus: number; memoryMiB: number };
/** VMs a caller is still creating (not `starting` yet, so not in allocated()). */
export type Reserved = Size & { vms: number };
export type Level = 'audit' | 'warn' | 'error';

/** What every part can reach: dependencies, in-memory state, helpers, and each part's functions. */
export interface VmContext extends Omit<VmManagerDeps, 'log'> {
  readonly log: MvirtLogger;
  readonly vms: Store['vms'];
  /** VMs whose hypervisor process runs (or is being launched), by id. */
  readonly lives: Map<string, Live>;
  /** Why a VM's last boot failed, for `vm.start {wait}` callers that come late. */
  readonly lastFailure: Map<string, { code: ErrorCode; reason: string }>;
  /** Emits ('state', record, from) after every transition. */
  readonly states: EventEmitter;
  /** Per-VM lifecycle locks (see withLock). */
  readonly locks: Map<string, Promise<unknown>>;
  /** The daemon is shutting down: no new boots. */
  closing: boolean;
  /** VMs that give way to any other (idle spares; yielding.ts), once the job manager says which. */
  yielding: YieldingVms | null;

  now(): string;
  dirOf(id: string): string;
  publish(topic: string, payload: string | Buffer, retain?: boolean): void;
  publishState(rec: VmRecord): void;
  /** The VM with this id or name; VM_NOT_FOUND otherwise. */
  find(ref: string): VmRecord;
  audit(message: string, objects: string[], data?: unknown): void;
  /** Serialise lifecycle operations per VM; `kill` bypasses it on purpose. */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /** The live entry of a VM whose hypervisor process exists (launched or re-attached). */
  liveOf(id: string): Live | undefined;

  // transition.ts
  transition(id: string, to: VmState, reason: string | null, level?: Level): VmRecord;
  waitForState(id: string, ok: readonly VmState[], fail: readonly VmState[]): Promise<VmRecord>;
  failBoot(live: Live, code: ErrorCode, reason: string): void;
  armBootTimer(live: Live): void;
  // exit.ts
  watchExit(live: Live, running: RunningVm): void;
  removeSockets(dir: string, sockets: Record<string, string>): void;
  // agent-events.ts
  openAgent(live: Live, overNetwork: boolean): void;
  attachConsole(live: Live): Promise<void>;
  // boot.ts
  admissionProblem(size: Size, reserved?: Reserved, mode?: YieldingMode): MvirtError | null;
  boot(id: string): Promise<VmRecord>;
  /** vm.start's dry run (boot.ts). */
  planBoot(id: string, plan: PlanBuilder): Promise<void>;
  // stop.ts
  stopProcess(live: Live, running: RunningVm, timeoutMs: number): Promise<void>;
  // recovery.ts
  recover(): Promise<void>;
}

/** The context without the parts' functions (manager.ts binds those). */
export function createVmContext(deps: VmManagerDeps): VmContext {
  const log = deps.log.child({ component: 'vm' });
  const states = new EventEmitter();
  states.setMaxListeners(0);
  const locks = new Map<string, Promise<unknown>>();
  const lives = new Map<string, Live>();
  const base = {
    ...deps,
    log,
    vms: deps.store.vms,
    lives,
    lastFailure: new Map<string, { code: ErrorCode; reason: string }>(),
    states,
    locks,
    closing: false,
    yielding: null,
    now: (): string => new Date().toISOString(),
    dirOf: (id: string): string => path.join(deps.options.vmDir, id),
    publish(topic: string, payload: string | Buffer, retain = false): void {
      deps.broker.publish(topic, payload, { retain, qos: 1 }).catch((err: unknown) => {
        log.warn({ err, topic }, 'publish failed');
      });
    },
    publishState(rec: VmRecord): void {
      base.publish(deps.topics.vmState(rec.id), JSON.stringify(rec), true);
    },
    find(ref: string): VmRecord {
      const vm = deps.store.vms.find(ref);
      if (!vm) throw new MvirtError('VM_NOT_FOUND', `no VM with id or name ${ref}`);
      return vm;
    },
    audit(message: string, objects: string[], data?: unknown): void {
      deps.events.append({ level: 'audit', component: 'vm', message, objects, data });
    },
    withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
      const prev = locks.get(id) ?? Promise.resolve();
      const next = prev.then(fn, fn);
      const tail = next.catch(() => undefined);
      locks.set(id, tail);
      void tail.then(() => {
        if (locks.get(id) === tail) locks.delete(id);
      });
      return next;
    },
    liveOf(id: string): Live | undefined {
      const l = lives.get(id);
      return l?.running ? l : undefined;
    },
  };
  // The parts' functions are bound by createVmManager before anything runs.
  return base as VmContext;
}
