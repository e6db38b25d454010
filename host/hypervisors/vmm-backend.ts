/**
 * What the REST-driven backends (cloud-hypervisor, Firecracker) do alike
 * around their own API calls: refuse a launch the host or the saved state
 * cannot take, clean up and explain a launch that failed, re-attach to a
 * leftover VMM (identity, its API answering, console and vsock again) and end
 * one that is not re-attached. Each backend keeps what differs: its argv,
 * its configuration requests and its control (one file per backend).
 */
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Logger } from 'pino';
import { VSOCK_PORT } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import { createApiVm, type ApiVmControl } from './api-vm.js';
import type { ConsolePump } from './console-pump.js';
import { logTail } from './console-log.js';
import { listenHybridVsock, type HybridVsockListener } from './hybrid-vsock.js';
import type { RestClient } from './rest.js';
import type { Hypervisor, LaunchSpec, ProbeResult, RunningVm, VmRuntime } from './types.js';
import { attachError, ownershipText, stateProblemOf, VMM_FILES } from './vmm-common.js';

/** One backend as the shared parts name it. */
export interface VmmBackendId {
  /** Its name in the registry and on the wire (`cloud-hypervisor`, `firecracker`). */
  name: string;
  /** How messages spell it (`cloud-hypervisor`, `Firecracker`). */
  label: string;
}

/** BACKEND_UNAVAILABLE when the VMM cannot run here; SNAPSHOT_INCOMPATIBLE for a state it cannot resume. */
export function checkLaunchable(
  id: VmmBackendId,
  p: ProbeResult & { binary: string | null },
  spec: LaunchSpec,
): string {
  if (!p.available || !p.binary)
    throw new MvirtError(
      'BACKEND_UNAVAILABLE',
      `${id.label} cannot run VMs here: ${p.reason ?? 'unknown'}`,
      { details: { backend: id.name, ...p.details } },
    );
  if (spec.restore) {
    const problem = stateProblemOf(spec.restore.state, spec, id.name, p.version ?? null);
    if (problem) throw new MvirtError('SNAPSHOT_INCOMPATIBLE', problem);
  }
  return p.binary;
}

/**
 * A launch that failed after the spawn: everything it opened is closed, the
 * VMM killed, and the error says why with the tail of the VMM's log
 * (BOOT_FAILED), except a saved state's own refusal, passed on as it is.
 */
export async function launchFailed(
  id: VmmBackendId,
  err: unknown,
  held: {
    dir: string;
    child: ChildProcess;
    client: RestClient | null;
    console: ConsolePump | null;
    vsock: HybridVsockListener | null;
  },
  vmLog: Logger,
): Promise<never> {
  held.client?.close();
  held.console?.close();
  await held.vsock?.close();
  if (held.child.exitCode === null && held.child.signalCode === null) held.child.kill('SIGKILL');
  if (err instanceof MvirtError && err.code.startsWith('SNAPSHOT_')) throw err;
  const tail = await logTail(path.join(held.dir, VMM_FILES.log));
  vmLog.warn({ err, tail }, `${id.label} launch failed`);
  throw new MvirtError(
    'BOOT_FAILED',
    `${id.label} failed during launch: ${(err as Error).message}${tail ? `: ${tail}` : ''}`,
    { cause: err, details: { vmmLog: tail } },
  );
}

/**
 * Adopt a leftover VMM: ours (identify), its API answering `ping` (a VMM
 * that answers but lost its VM is not adopted), its console and, for a vsock
 * agent, a new hybrid-vsock listener the guest's agent redials.
 */
export async function attachVmm(
  id: VmmBackendId,
  a: {
    runtime: VmRuntime;
    dir: string;
    identify: Hypervisor['identify'];
    client: () => RestClient;
    ping: (client: RestClient) => Promise<unknown>;
    console: () => Promise<ConsolePump>;
    control: (client: RestClient) => ApiVmControl;
    agentConnectTimeoutMs: number;
  },
  vmLog: Logger,
): Promise<RunningVm> {
  const { runtime, dir } = a;
  const who = a.identify(runtime, dir);
  if (who !== 'ours') throw attachError(who, ownershipText(who, runtime, dir, id.name));
  const client = a.client();
  try {
    await a.ping(client);
  } catch (err) {
    client.close();
    throw attachError(
      'control-unreachable',
      `the API of ${id.label} ${runtime.pid} does not answer`,
      err,
    );
  }
  let consolePump: ConsolePump | null = null;
  try {
    consolePump = await a.console();
  } catch (err) {
    vmLog.warn({ err }, 'cannot reconnect the serial console');
  }
  // The old listener went with the old mvirtd; the guest's agent redials this one.
  const vsock = runtime.sockets.agent
    ? await listenHybridVsock(path.join(dir, VMM_FILES.vsock), VSOCK_PORT)
    : null;
  vmLog.info({ pid: runtime.pid }, `${id.label} re-attached`);
  return createApiVm({
    runtime,
    control: a.control(client),
    console: consolePump,
    vsock,
    log: vmLog,
    agentConnectTimeoutMs: a.agentConnectTimeoutMs,
  });
}

/** End a leftover VMM of ours that is not re-attached. */
export function disposeVmm(
  id: VmmBackendId,
  identify: Hypervisor['identify'],
): Hypervisor['dispose'] {
  return async (runtime, dir, vmLog) => {
    if (identify(runtime, dir) !== 'ours') return;
    vmLog.warn({ pid: runtime.pid }, `ending a leftover ${id.label} that is not re-attached`);
    try {
      process.kill(runtime.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  };
}
