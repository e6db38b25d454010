/**
 * RunningVm for a VMM driven over a REST API (cloud-hypervisor, Firecracker),
 * launched by us or adopted after a daemon restart. The backend supplies the
 * control calls; this file owns what they share: death noticed (the child's
 * 'exit' for our own children; for adopted ones, which Node cannot wait for,
 * a /proc poll of pid and start time), the console pump, the hybrid-vsock
 * listener the agent dials, and refusing control once the process is gone.
 *
 * An adopted process is polled every POLL_MS: unlike QMP, a REST API keeps no
 * connection open whose closing would say the VMM died.
 */
import type { ChildProcess } from 'node:child_process';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { MvirtError } from '../../protocol/errors.js';
import type { ConsolePump } from './console-pump.js';
import type { HybridVsockListener } from './hybrid-vsock.js';
import { isSameProcess } from './proc.js';
import type { DiskHotplug, ExitInfo, RunningVm, VmRunState, VmRuntime } from './types.js';

/** Liveness poll of adopted processes (≤ 250 ms to notice a death). */
const POLL_MS = 250;

export interface ApiVmControl {
  pause(): Promise<void>;
  resume(): Promise<void>;
  reboot?(): Promise<void>;
  powerdown?(): Promise<void>;
  /** Stop the VMM at once through its API. */
  quit?(): Promise<void>;
  status(): Promise<VmRunState>;
  saveState?: RunningVm['saveState'];
  hotplug?: DiskHotplug;
  /** Drop the API connection (detach, exit). */
  close(): void;
}

export interface ApiVmParts {
  runtime: VmRuntime;
  control: ApiVmControl;
  console: ConsolePump | null;
  /** The agent's channel: the host end of the hybrid vsock; null when the agent goes over TCP. */
  vsock: HybridVsockListener | null;
  /** Our own child (launch); absent for adopted processes (attach). */
  child?: ChildProcess;
  log: Logger;
  agentConnectTimeoutMs: number;
  /** What the process held outside its folder: released before `exited` resolves. */
  release?: () => Promise<void>;
}

export function createApiVm(parts: ApiVmParts): RunningVm {
  const { runtime, control, child, log } = parts;
  const pid = runtime.pid;
  let detached = false;
  let done = false;
  let pollTimer: NodeJS.Timeout | null = null;
  const isOurs = () => isSameProcess(pid, runtime.startTime);

  let resolveExited!: (info: ExitInfo) => void;
  const exited = new Promise<ExitInfo>((r) => (resolveExited = r));
  const finish = (info: ExitInfo) => {
    if (done) return;
    done = true;
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
    control.close();
    parts.console?.close();
    log.info({ pid, ...info }, 'hypervisor process exited');
    // As on QEMU: the exit is told once nothing writes into the VM's folder any more.
    void Promise.all([parts.vsock?.close(), parts.console?.closed])
      .then(() => parts.console?.log.flush())
      .then(() => parts.release?.())
      .catch((err: unknown) => log.warn({ err }, 'clean-up after the exit failed'))
      .then(() => resolveExited(info));
  };
  const describe = (code: number | null, signal: string | null) =>
    signal !== null ? `killed by ${signal}` : code !== null ? `exited with code ${code}` : 'exited';

  if (child) {
    if (child.exitCode !== null || child.signalCode !== null) {
      finish({
        code: child.exitCode,
        signal: child.signalCode,
        reason: describe(child.exitCode, child.signalCode),
      });
    } else {
      child.once('exit', (code, signal) =>
        finish({ code, signal, reason: describe(code, signal) }),
      );
    }
  } else {
    pollTimer = setInterval(() => {
      if (!detached && !isOurs())
        finish({ code: null, signal: null, reason: 'exited (adopted; exit status unknown)' });
    }, POLL_MS);
    pollTimer.unref();
  }

  const guard =
    <A extends unknown[], R>(what: string, fn: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      if (done)
        throw new MvirtError('VM_BAD_STATE', `cannot ${what}: the hypervisor process has exited`);
      if (detached)
        throw new MvirtError('HYPERVISOR_ERROR', `cannot ${what}: detached from the VM`);
      return fn(...a);
    };
  const lacks = (what: string) => () =>
    Promise.reject(
      new MvirtError('CAPABILITY_UNSUPPORTED', `backend ${runtime.backend} cannot ${what}`, {
        details: { backend: runtime.backend },
      }),
    );

  const h = control.hotplug;
  const hotplug: DiskHotplug | undefined = h && {
    handOver: guard('hand over a disk', (d) => h.handOver(d)),
    addBackend: guard('add a disk', (d) => h.addBackend(d)),
    removeBackend: guard('remove a disk', (s) => h.removeBackend(s)),
    plug: guard('plug a disk', (d) => h.plug(d)),
    unplug: guard('unplug a disk', (s, ms) => h.unplug(s, ms)),
  };

  return {
    runtime,
    ...(hotplug ? { hotplug } : {}),
    pause: guard('pause', () => control.pause()),
    resume: guard('resume', () => control.resume()),
    reboot: guard('reboot', control.reboot?.bind(control) ?? lacks('reboot a VM')),
    powerdown: guard('power down', control.powerdown?.bind(control) ?? lacks('power a VM down')),
    ...(control.quit ? { quit: guard('quit', control.quit.bind(control)) } : {}),
    ...(control.saveState ? { saveState: guard('save the state', control.saveState) } : {}),
    async status() {
      if (done) return 'shutdown';
      return control.status();
    },
    async connectAgent(): Promise<Duplex> {
      if (done) throw new MvirtError('AGENT_UNAVAILABLE', 'the hypervisor process has exited');
      if (!parts.vsock)
        throw new MvirtError('AGENT_UNAVAILABLE', 'this VM has no host-side agent channel');
      return parts.vsock.accept(parts.agentConnectTimeoutMs);
    },
    async connectConsole(): Promise<Duplex> {
      if (!parts.console || done) throw new MvirtError('HYPERVISOR_ERROR', 'no console connection');
      return parts.console.connect();
    },
    signal(sig) {
      // Never signal a recycled pid: check the start time first.
      if (done || !isOurs()) return;
      try {
        process.kill(pid, sig);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    },
    exited,
    async detach() {
      detached = true;
      if (pollTimer) clearInterval(pollTimer);
      pollTimer = null;
      child?.unref();
      control.close();
      parts.console?.close();
      await Promise.all([parts.vsock?.close(), parts.console?.closed]);
      await parts.console?.log.flush();
    },
  };
}
