/**
 * RunningVm for one QEMU process, launched by us or adopted after a daemon
 * restart. Control goes through QMP; death is noticed through the child's
 * 'exit' event (own children) or, for adopted processes (no pidfd in Node),
 * through the QMP socket closing plus a /proc check, with a short /proc poll
 * as a fallback when the control connection is not there.
 */
import { QMP_CONTROL } from './plans.js';
import type { ChildProcess } from 'node:child_process';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import type { DiskHotplug, ExitInfo, RunningVm, VmEvent, VmRunState, VmRuntime } from '../types.js';
import { NETDEV, type QemuPaths } from './args.js';
import type { ConsolePump } from '../console-pump.js';
import { readProcStat } from '../proc.js';
import type { QmpClient, QmpEvent, QmpRunState } from './qmp.js';
import { connectUnixWithRetry } from '../unix-socket.js';
import type { HybridVsockListener } from '../hybrid-vsock.js';
import { qmpDiskSnapshot } from './disk-snapshot.js';

/** Liveness poll for adopted processes while QMP is not telling us (≤ 1 s detection). */
const POLL_MS = 250;

export function toRunState(s: QmpRunState | string): VmRunState {
  switch (s) {
    case 'running':
      return 'running';
    case 'paused':
    case 'suspended':
    case 'debug':
    case 'io-error':
    case 'watchdog':
    case 'save-vm':
    case 'restore-vm':
    case 'finish-migrate':
    case 'postmigrate':
      return 'paused';
    case 'prelaunch':
    case 'inmigrate':
      return 'starting';
    case 'shutdown':
      return 'shutdown';
    case 'internal-error':
    case 'guest-panicked':
      return 'crashed';
    default:
      return 'unknown';
  }
}

function toVmEvent(ev: QmpEvent): VmEvent | null {
  switch (ev.event) {
    case 'SHUTDOWN':
      return { type: 'shutdown', at: ev.at, reason: String(ev.data.reason ?? 'unknown') };
    case 'RESET':
      return { type: 'reset', at: ev.at, guest: ev.data.guest === true };
    case 'STOP':
      return { type: 'paused', at: ev.at };
    case 'RESUME':
      return { type: 'resumed', at: ev.at };
    case 'POWERDOWN':
      return { type: 'powerdown', at: ev.at };
    case 'GUEST_PANICKED':
      return { type: 'panicked', at: ev.at };
    default:
      return null;
  }
}

export interface QemuVmParts {
  runtime: VmRuntime;
  paths: QemuPaths;
  qmp: QmpClient;
  console: ConsolePump | null;
  /** Our own child (launch); absent for adopted processes (attach). */
  child?: ChildProcess;
  log: Logger;
  agentConnectTimeoutMs: number;
  /** Hot-plug of disks over this QMP connection (hotplug.ts); absent where the machine has none. */
  hotplug?: DiskHotplug;
  /** What the process held outside its folder (cgroup, RAM file): released before `exited` resolves. */
  release?: () => Promise<void>;
  /** Memory and device state to a file (state.ts). */
  saveState?: NonNullable<RunningVm['saveState']>;
  /** The agent's vsock listener (vsock.ts), or null: it comes over virtio-serial or TCP. */
  vsock?: HybridVsockListener | null;
}

export function createQemuVm(parts: QemuVmParts): RunningVm {
  const { runtime, paths, qmp, child, log } = parts;
  const pid = runtime.pid;
  const listeners = new Set<(e: VmEvent) => void>();
  let lastShutdownReason: string | null = null;
  let detached = false;
  let pollTimer: NodeJS.Timeout | null = null;

  /** Same process as when we launched/attached (pid-reuse guard for signals and polls). */
  const isOurs = (): boolean => {
    const st = readProcStat(pid);
    return (
      st !== null && st.state !== 'Z' && st.state !== 'X' && st.startTime === runtime.startTime
    );
  };

  qmp.on('event', (ev) => {
    const e = toVmEvent(ev);
    if (!e) return;
    if (e.type === 'shutdown') lastShutdownReason = e.reason;
    for (const l of listeners) {
      try {
        l(e);
      } catch (err) {
        log.warn({ err }, 'VM event listener threw');
      }
    }
  });

  const describe = (code: number | null, signal: string | null): string => {
    const how =
      signal !== null
        ? `killed by ${signal}`
        : code !== null
          ? `exited with code ${code}`
          : 'exited';
    return lastShutdownReason ? `${how} after shutdown (${lastShutdownReason})` : how;
  };

  let resolveExited!: (info: ExitInfo) => void;
  const exited = new Promise<ExitInfo>((r) => (resolveExited = r));
  let done = false;
  const finish = (info: ExitInfo) => {
    if (done) return;
    done = true;
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
    qmp.close();
    parts.console?.close();
    void parts.vsock?.close();
    log.info({ pid, ...info }, 'hypervisor process exited');
    // Ended once the console's last output is on disk: a folder removed right
    // after the exit (vm.delete, a test's cleanup) must find nothing still
    // writing into it (a late append re-created console.log mid-removal).
    void Promise.resolve(parts.console?.closed)
      .then(() => parts.console?.log.flush())
      .then(() => parts.release?.())
      .catch((err: unknown) => log.warn({ err }, 'clean-up after the exit failed'))
      .then(() => resolveExited(info));
  };

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
    // Adopted: the exit status belongs to our former self's parent (init); we
    // only learn that the process is gone.
    const checkGone = () => {
      if (!isOurs()) {
        finish({
          code: null,
          signal: null,
          reason: describe(null, null) + ' (adopted; exit status unknown)',
        });
        return true;
      }
      return false;
    };
    const startPolling = () => {
      if (pollTimer || done || detached) return;
      pollTimer = setInterval(checkGone, POLL_MS);
      pollTimer.unref();
    };
    // QEMU's death closes the QMP socket at once: check /proc then; if the
    // process is somehow still there, fall back to polling.
    void qmp.closed.then(() => {
      if (!detached && !checkGone()) startPolling();
    });
  }

  const control = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    if (done)
      throw new MvirtError('VM_BAD_STATE', `cannot ${what}: the hypervisor process has exited`);
    if (detached) throw new MvirtError('HYPERVISOR_ERROR', `cannot ${what}: detached from the VM`);
    await fn();
  };

  /** fn through control(): refused once the process is gone or detached. */
  const guarded =
    <A extends unknown[], R>(what: string, fn: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      let out!: R;
      await control(what, async () => (out = await fn(...a)));
      return out;
    };

  // Each hot-plug step goes through control(): none once the process is gone or detached.
  const h = parts.hotplug;
  const hotplug: DiskHotplug | undefined = h && {
    handOver: (d) => control('hand over a disk', () => h.handOver(d)),
    addBackend: (d) => control('add a disk', () => h.addBackend(d)),
    removeBackend: (s) => control('remove a disk', () => h.removeBackend(s)),
    plug: (d) => control('plug a disk', () => h.plug(d)),
    unplug: (s, ms) => control('unplug a disk', () => h.unplug(s, ms)),
  };

  return {
    runtime,
    ...(hotplug ? { hotplug } : {}),
    pause: () => control('pause', () => qmp.execute(QMP_CONTROL.pause)),
    resume: () => control('resume', () => qmp.execute(QMP_CONTROL.resume)),
    reboot: () => control('reboot', () => qmp.execute(QMP_CONTROL.reboot)),
    powerdown: () => control('power down', () => qmp.execute(QMP_CONTROL.powerdown)),
    quit: () => control('quit', () => qmp.execute(QMP_CONTROL.quit)),
    diskSnapshot: (action, file, name) =>
      control('snapshot a disk', () => qmpDiskSnapshot(qmp, action, file, name)),
    ...(parts.saveState ? { saveState: guarded('save the state', parts.saveState) } : {}),
    setLink: (up) =>
      control('set the link', () => qmp.executeRaw('set_link', { name: NETDEV, up })),
    async status() {
      if (done) return 'shutdown';
      const st = await qmp.execute('query-status');
      return toRunState(st.status);
    },
    async connectAgent(): Promise<Duplex> {
      if (done) throw new MvirtError('AGENT_UNAVAILABLE', 'the hypervisor process has exited');
      if (parts.vsock) return parts.vsock.accept(parts.agentConnectTimeoutMs);
      return connectUnixWithRetry(paths.agent, { timeoutMs: parts.agentConnectTimeoutMs });
    },
    async connectConsole(): Promise<Duplex> {
      if (!parts.console || done) throw new MvirtError('HYPERVISOR_ERROR', 'no console connection');
      return parts.console.connect();
    },
    signal(sig: NodeJS.Signals) {
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
      // Let the daemon exit while the VM runs on.
      child?.unref();
      qmp.close();
      parts.console?.close();
      await parts.vsock?.close();
      await Promise.all([qmp.closed, parts.console?.closed]);
      await parts.console?.log.flush();
    },
    onEvent(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
