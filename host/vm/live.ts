/**
 * What the manager holds in memory for a VM whose hypervisor process runs:
 * the backend handle, the console, timers. The durable truth (state, runtime
 * row) is in SQLite, the agent session in host/agent/; this is only the live
 * wiring.
 */
import type { Duplex } from 'node:stream';
import type { Hypervisor, RunningVm } from '../hypervisors/types.js';
import type { ErrorCode } from '../../protocol/errors.js';
import type { RestoreInfo, VmState } from '../../protocol/rpc.js';
import type { MvirtLogger } from '../log.js';

export interface Live {
  readonly id: string;
  readonly hv: Hypervisor;
  readonly dir: string;
  readonly log: MvirtLogger;
  /** Whether the image runs mvirt-agent (else the VM goes to `running`). */
  agentExpected: boolean;
  /** Set once launch (or attach) succeeded. */
  running?: RunningVm;
  /** performance.now() at launch; undefined for VMs adopted by recovery. */
  launchedAt?: number;
  bootTimer?: NodeJS.Timeout;
  console?: Duplex;
  pausedFrom?: VmState;
  /** What the exit of the process means, when we caused it. */
  exitIntent?: { to: 'stopped' | 'failed' | 'suspended'; reason: string };
  /** Resumed from saved state: what the agent's first hello must finish (restore.ts). */
  restoring?: {
    info: RestoreInfo;
    /** The agent's clock and entropy sync, once asked for. */
    synced?: Promise<void>;
    /** The NIC's link is down until the agent says its new address is on (forks, bridged). */
    linkDown: boolean;
  };
  /** Why the last boot failed, for `vm.start {wait}` callers. */
  failure?: { code: ErrorCode; reason: string };
  /** The daemon is shutting down and leaves this VM running. */
  detached: boolean;
  /** The process is gone and the entry has been cleaned up. */
  gone: boolean;
}

export function newLive(init: {
  id: string;
  hv: Hypervisor;
  dir: string;
  log: MvirtLogger;
  agentExpected: boolean;
}): Live {
  return { ...init, detached: false, gone: false };
}

export function clearTimers(live: Live): void {
  if (live.bootTimer) clearTimeout(live.bootTimer);
  live.bootTimer = undefined;
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
