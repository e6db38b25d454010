/**
 * What the manager holds in memory for a VM whose hypervisor process runs:
 * the backend handle, the agent channel and console, timers. The durable
 * truth (state, runtime row) is in SQLite; this is only the live wiring.
 */
import type { Duplex } from 'node:stream';
import type { AgentChannelHandle } from '../broker/types.js';
import type { Hypervisor, RunningVm } from '../hypervisors/types.js';
import type { Hello } from '../../protocol/agent.js';
import type { ErrorCode } from '../../protocol/errors.js';
import type { VmState } from '../../protocol/rpc.js';
import type { MvirtLogger } from '../log.js';

export interface Live {
  readonly id: string;
  readonly hv: Hypervisor;
  readonly dir: string;
  readonly log: MvirtLogger;
  /** Whether the image runs mvirt-agent (else the VM goes to `running`). */
  agentExpected: boolean;
  /** The agent dials the guest TCP listener: the host end arrives from the broker. */
  agentOverNetwork: boolean;
  /** Set once launch (or attach) succeeded. */
  running?: RunningVm;
  /** performance.now() at launch; undefined for VMs adopted by recovery. */
  launchedAt?: number;
  agentHandle?: AgentChannelHandle;
  /** The job manager holds the channel (output backpressure); kept across reconnects. */
  holdAgent?: boolean;
  /** The hello of the current agent session; undefined while no agent is connected. */
  hello?: Hello;
  reconnectDelayMs: number;
  reconnectTimer?: NodeJS.Timeout;
  bootTimer?: NodeJS.Timeout;
  console?: Duplex;
  pausedFrom?: VmState;
  /** What the exit of the process means, when we caused it. */
  exitIntent?: { to: 'stopped' | 'failed'; reason: string };
  /** Why the last boot failed, for `vm.start {wait}` callers. */
  failure?: { code: ErrorCode; reason: string };
  /** The daemon is shutting down and leaves this VM running. */
  detached: boolean;
  /** The process is gone and the entry has been cleaned up. */
  gone: boolean;
}

export const RECONNECT_MIN_MS = 100;
export const RECONNECT_MAX_MS = 5000;
/** How long an attached agent channel may go without a hello before it is recycled. */
export const AGENT_SESSION_MS = 30_000;

export function newLive(init: {
  id: string;
  hv: Hypervisor;
  dir: string;
  log: MvirtLogger;
  agentExpected: boolean;
  agentOverNetwork: boolean;
}): Live {
  return { ...init, reconnectDelayMs: RECONNECT_MIN_MS, detached: false, gone: false };
}

export function clearTimers(live: Live): void {
  if (live.bootTimer) clearTimeout(live.bootTimer);
  if (live.reconnectTimer) clearTimeout(live.reconnectTimer);
  live.bootTimer = undefined;
  live.reconnectTimer = undefined;
}

/** Resolves true when the process exits within `ms`, false otherwise. */
export function exitsWithin(running: RunningVm, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void running.exited.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}
