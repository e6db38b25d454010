/**
 * The QEMU backend: direct kernel boot of the µOS, QMP for control and the
 * agent's virtio-serial port on unix sockets in the VM's folder, the serial
 * console on two FIFOs there (console.ts). QEMU runs in its own session so that it outlives mvirtd;
 * attach() adopts it again after a restart.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import type {
  Hypervisor,
  HypervisorCapabilities,
  LaunchSpec,
  RunningVm,
  VmRuntime,
} from '../types.js';
import {
  buildQemuArgs,
  QEMU_CHANNELS,
  IDENTITY_FILE,
  NETDEV,
  qemuPaths,
  type QemuAccel,
  type QemuPaths,
} from './args.js';
import { makeConsoleFifos, startConsolePump, type ConsolePump } from '../console-pump.js';
import { createConfiner, resolveProgram, type Confined, type Confinement } from './confine.js';
import { createProber, type QemuProbe } from './probe.js';
import { QEMU_DEFAULTS, type QemuBackendOptions } from './options.js';
import { createQemuVsock, type VsockLease } from './vsock.js';
import { qemuPlans } from './plans.js';
import { readProcStat } from '../proc.js';
import { logTail } from '../console-log.js';
import {
  attachError,
  disposeOrphans,
  identify,
  OWNERSHIP_TEXT,
  QEMU_BACKEND,
} from './ownership.js';
import { connectQmp, type QmpClient } from './qmp.js';
import { createQemuHotplug } from './hotplug.js';
import { createQemuVm } from './vm.js';
import { loadState, qemuStates, STATE_FD, STATE_FILE } from './state.js';
import { createRamFiles } from './ram.js';

export { QEMU_BACKEND };
export type { QemuBackendOptions };

export interface QemuBackend extends Hypervisor {
  /** The full probe (both accelerators), cached. */
  probeDetails(): Promise<QemuProbe>;
  /** How QEMU processes are confined here (decided once, at construction). */
  readonly confinement: Confinement;
}

/** The disk device of pc and q35 machines (hot-plug and boot alike). */
const BLK_DRIVER = 'virtio-blk-pci';

export function createQemuBackend(options: QemuBackendOptions, log: Logger): QemuBackend {
  const opts = { ...QEMU_DEFAULTS, ...options };
  const blog = log.child({ backend: QEMU_BACKEND });

  const vsock = createQemuVsock(
    {
      dir: opts.vsockDir,
      cacheDir: opts.helperCacheDir,
      device: opts.vhostVsockDevice,
    },
    blog,
  );
  if (opts.vsockDir && vsock.unavailable) blog.info(`no vsock for QEMU VMs: ${vsock.unavailable}`);
  const channels: HypervisorCapabilities['channels'] = vsock.unavailable
    ? [...QEMU_CHANNELS]
    : ['vsock', ...QEMU_CHANNELS];
  const capabilities: HypervisorCapabilities = {
    channels,
    pause: true,
    reboot: true,
    gracefulShutdown: true,
    console: true,
    directKernelBoot: true,
    // -kernel takes either; the bzImage needs no derived file.
    kernelFormats: ['bzImage', 'elf'],
    // microvm's virtio-mmio devices cannot be plugged in later; pc and q35 have ACPI PCI hot-plug.
    hotplugDisks: opts.machine !== 'microvm',
    liveDiskSnapshots: true,
    snapshots: true,
    // The guest reads its new identity from fw_cfg after a restore.
    forks: true,
    // TCG where KVM does not answer (probe.ts): the only backend that runs without KVM.
    accel: opts.accel === 'auto' ? ['kvm', 'tcg'] : [opts.accel],
  };

  const confiner = createConfiner(
    {
      enabled: opts.confine,
      seccomp: opts.sandbox,
      uidBase: opts.uidBase,
      uidCount: opts.uidCount,
      tcgTbSizeMiB: opts.tcgTbSizeMiB,
      setpriv: opts.setpriv,
    },
    blog,
  );
  // QEMU gets an empty environment, so the launcher needs its absolute path.
  const binary = resolveProgram(opts.binary) ?? opts.binary;
  /** Each data folder's VM cgroups are swept once, at the first call about it (recovery). */
  const swept = new Set<string>();
  const sweep = async (dir: string) => {
    const root = path.dirname(dir);
    if (swept.has(root)) return;
    swept.add(root);
    await confiner
      .sweep(root, blog)
      .catch((err: unknown) => blog.warn({ err }, 'cgroup sweep failed'));
  };
  const ram = createRamFiles(opts.ramDir);
  /** What a VM's process held, once it is gone: its cgroup and its RAM file. */
  const release = async (dir: string, vmLog: Logger) => {
    await vsock.release(dir);
    await ram
      .remove(path.basename(dir))
      .catch((err: unknown) => vmLog.warn({ err }, 'cannot remove the VM RAM file'));
    await confiner
      .release(dir, vmLog)
      .catch((err: unknown) => vmLog.warn({ err }, 'cannot remove the VM cgroup'));
  };

  const hotplugFor = (qmp: QmpClient, dir: string, vmLog: Logger) =>
    capabilities.hotplugDisks
      ? createQemuHotplug({
          qmp,
          dir,
          blkDriver: BLK_DRIVER,
          handOver: (d, disk) => confiner.handOverDisk(d, disk),
          log: vmLog,
        })
      : undefined;

  const states = qemuStates({
    machine: opts.machine,
    ramFileOf: (vmId) => ram.fileOf(vmId),
    version: async () => (await probeDetails()).version,
    grant: (dir, f) => confiner.handOverFile(dir, f),
  });

  const { probeDetails, probe } = createProber(
    {
      binary: opts.binary,
      kvmTimeoutMs: opts.kvmProbeTimeoutMs,
      tcgTimeoutMs: opts.tcgProbeTimeoutMs,
      accel: opts.accel,
      machine: opts.machine,
      confinement: () => confiner.state,
    },
    blog,
  );

  async function removeSockets(paths: QemuPaths) {
    const all = [
      paths.qmp,
      paths.agent,
      paths.consoleSocket,
      `${paths.console}.in`,
      `${paths.console}.out`,
    ];
    await Promise.all(all.map((p) => rm(p, { force: true })));
  }

  async function launch(spec: LaunchSpec, vmLog: Logger): Promise<RunningVm> {
    const p = await probe();
    if (!p.available || !p.accel) {
      throw new MvirtError(
        'BACKEND_UNAVAILABLE',
        `QEMU cannot run VMs here: ${p.reason ?? 'unknown'}`,
      );
    }
    const accel = p.accel as QemuAccel;
    const paths = qemuPaths(spec.dir);
    if (spec.restore) {
      const problem = await states.problem(spec.restore.state, spec);
      if (problem) throw new MvirtError('SNAPSHOT_INCOMPATIBLE', problem);
    }
    const ramFile = ram.fileOf(spec.vmId) ?? undefined;
    await mkdir(spec.dir, { recursive: true, mode: 0o700 });
    const lease: VsockLease | null = spec.channel === 'vsock' ? await vsock.lease(spec.dir) : null;
    // Inherited fds: a restore's state file first (STATE_FD), then the vhost-vsock device.
    const vhostFd = STATE_FD + (spec.restore ? 1 : 0);
    const args = buildQemuArgs({
      spec,
      accel,
      machine: opts.machine,
      machineType: spec.restore?.state.machine,
      ...(ramFile ? { ramFile } : {}),
      paths,
      tcgTbSizeMiB: opts.tcgTbSizeMiB,
      sandbox: opts.sandbox,
      ...(lease ? { vsock: { cid: lease.cid, fd: vhostFd } } : {}),
    });
    await sweep(spec.dir);
    await removeSockets(paths);
    const identity = path.join(spec.dir, IDENTITY_FILE);
    if (spec.identity) await writeFile(identity, spec.identity, { mode: 0o600 });
    const fifos = await makeConsoleFifos(paths.console).catch((err: unknown) => {
      throw new MvirtError('BOOT_FAILED', `cannot make the console FIFOs: ${String(err)}`, {
        cause: err,
      });
    });
    let confined: Confined;
    try {
      await ram.prepare(spec.vmId, spec.memoryMiB, spec.restore?.dir);
      confined = await confiner.prepare(spec, binary, args, [
        ...fifos,
        ...(spec.identity ? [identity] : []),
        ...(ramFile ? [ramFile] : []),
      ]);
    } catch (err) {
      await lease?.device.close();
      await lease?.listener.close();
      await release(spec.dir, vmLog);
      throw new MvirtError('BOOT_FAILED', `cannot confine QEMU: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const out = await open(paths.log, 'w');
    // A restore's state file, opened here (read-only) and inherited as fd 3:
    // the VM's user never needs access to the snapshot's folder (state.ts).
    const state = spec.restore ? await open(path.join(spec.restore.dir, STATE_FILE), 'r') : null;
    const started = Date.now();
    let child: ChildProcess;
    try {
      // Own session (setsid): signals to mvirtd's group and its exit do not reach QEMU.
      // Only stdio (and a restore's state file) is inherited (Node opens everything
      // else close-on-exec), and no environment variable at all.
      child = spawn(confined.command, confined.args, {
        detached: true,
        stdio: [
          'ignore',
          out.fd,
          out.fd,
          ...(state ? [state.fd] : []),
          ...(lease ? [lease.device.fd] : []),
        ],
        env: confined.env,
      });
    } finally {
      await out.close();
      await state?.close();
      await lease?.device.close();
    }
    vmLog.info(
      {
        pid: child.pid,
        accel,
        machine: opts.machine,
        uid: confined.uid,
        cgroup: confined.cgroup?.dirs,
        argv: [confined.command, ...confined.args],
      },
      'QEMU spawned',
    );

    // Launch aborts as soon as QEMU dies (bad arguments, missing kernel, …).
    const abort = new AbortController();
    const exitedEarly = new Promise<{ code: number | null; signal: string | null; error?: Error }>(
      (resolve) => {
        child.once('exit', (code, signal) => {
          abort.abort(new Error('QEMU exited during launch'));
          resolve({ code, signal });
        });
        child.once('error', (error) => {
          abort.abort(error);
          resolve({ code: null, signal: null, error });
        });
      },
    );

    let qmp: QmpClient | null = null;
    let consolePump: ConsolePump | null = null;
    try {
      const pid = child.pid;
      const stat = pid !== undefined ? readProcStat(pid) : null;
      if (pid === undefined || !stat) throw new Error('QEMU did not start');
      // Paused (-S) until `cont` below: the guest's first instruction already runs in the cgroup.
      await confiner.join(confined, pid);
      const runtime: VmRuntime = {
        backend: QEMU_BACKEND,
        pid,
        startTime: stat.startTime,
        accel,
        sockets: { qmp: paths.qmp, console: paths.console, agent: paths.agent },
      };
      const connect = { timeoutMs: opts.launchTimeoutMs, signal: abort.signal };
      qmp = await connectQmp(paths.qmp, {
        log: vmLog,
        connect,
        handshakeTimeoutMs: opts.launchTimeoutMs,
      });
      // QMP answers once QEMU has set itself up: seccomp on, running as the VM's uid.
      confiner.verify(confined, pid);
      consolePump = await startConsolePump({
        source: { kind: 'pipe', base: paths.console },
        logFile: paths.consoleLog,
        maxLogBytes: spec.consoleLogBytes,
        connect,
        log: vmLog,
      });
      if (spec.restore) {
        await loadState(qmp, `fd:${STATE_FD}`, spec.restore.state, vmLog);
        // Loaded, not yet run: a state that fails its check never executes.
        await spec.restore.check;
        if (spec.restore.linkDown) await qmp.executeRaw('set_link', { name: NETDEV, up: false });
      }
      // QEMU was started with -S: the console is connected, run the guest now.
      await qmp.execute('cont');
      vmLog.info({ pid, ms: Date.now() - started }, 'QEMU running');
      const vm = createQemuVm({
        runtime,
        paths,
        qmp,
        console: consolePump,
        child,
        log: vmLog,
        agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
        vsock: lease?.listener ?? null,
        hotplug: hotplugFor(qmp, spec.dir, vmLog),
        saveState: states.saverFor(qmp, spec.dir, vmLog),
        release: () => release(spec.dir, vmLog),
      });
      return vm;
    } catch (err) {
      qmp?.close();
      consolePump?.close();
      await lease?.listener.close();
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        child.kill('SIGKILL');
      }
      const exit = await exitedEarly;
      await release(spec.dir, vmLog);
      // A saved state that failed its check: the caller's typed error, not a boot failure.
      if (err instanceof MvirtError && err.code.startsWith('SNAPSHOT_')) throw err;
      const tail = await logTail(paths.log);
      const how = exit.error
        ? `could not be started: ${exit.error.message}`
        : abort.signal.aborted && !(err instanceof MvirtError && err.code === 'TIMEOUT')
          ? `exited during launch (${exit.signal ?? `code ${exit.code}`})`
          : `failed during launch: ${(err as Error).message}`;
      vmLog.warn({ err, tail }, `QEMU ${how}`);
      throw new MvirtError('BOOT_FAILED', `QEMU ${how}${tail ? `: ${tail}` : ''}`, {
        cause: exit.error ?? err,
        details: { qemuLog: tail },
      });
    }
  }

  async function attach(runtime: VmRuntime, dir: string, vmLog: Logger): Promise<RunningVm> {
    await sweep(dir);
    const who = identify(runtime, dir);
    if (who !== 'ours') throw attachError(who, OWNERSHIP_TEXT[who](runtime, dir));
    const paths = qemuPaths(dir);
    let qmp: QmpClient;
    try {
      qmp = await connectQmp(paths.qmp, {
        log: vmLog,
        connect: { timeoutMs: 5000 },
        handshakeTimeoutMs: 5000,
      });
    } catch (err) {
      throw attachError('control-unreachable', `QMP of pid ${runtime.pid} does not answer`, err);
    }
    let consolePump: ConsolePump | null = null;
    try {
      consolePump = await startConsolePump({
        // A VM launched by an earlier mvirtd has a console socket instead of FIFOs.
        source: existsSync(`${paths.console}.out`)
          ? { kind: 'pipe', base: paths.console }
          : { kind: 'socket', path: paths.consoleSocket },
        logFile: paths.consoleLog,
        maxLogBytes: opts.consoleLogBytes,
        connect: { timeoutMs: 5000 },
        log: vmLog,
      });
    } catch (err) {
      // A VM without a console is still a VM: keep control, log the loss.
      vmLog.warn({ err }, 'cannot reconnect the serial console');
    }
    // The old listener went with the old mvirtd; the guest's agent redials this one.
    const listener = await vsock.reattach(dir);
    vmLog.info({ pid: runtime.pid }, 'QEMU re-attached');
    const vm = createQemuVm({
      runtime,
      paths,
      qmp,
      console: consolePump,
      log: vmLog,
      agentConnectTimeoutMs: opts.agentConnectTimeoutMs,
      vsock: listener,
      // Names derive from serials: a re-adopted VM's disks are detachable as they were.
      hotplug: hotplugFor(qmp, dir, vmLog),
      saveState: states.saverFor(qmp, dir, vmLog),
      // The adopted process keeps its cgroup and RAM file; released when it ends.
      release: () => release(dir, vmLog),
    });
    return vm;
  }

  /**
   * SIGKILL, not QMP `quit`: a leftover that is not re-adopted is often one
   * whose QMP does not answer, and its guest has no say any more either way.
   */
  async function dispose(runtime: VmRuntime, dir: string, vmLog: Logger): Promise<void> {
    await sweep(dir);
    const who = identify(runtime, dir);
    if (who !== 'ours') {
      vmLog.debug({ pid: runtime.pid, who }, 'leftover QEMU not ours to end');
      return;
    }
    vmLog.warn({ pid: runtime.pid }, 'ending a leftover QEMU process that is not re-attached');
    try {
      process.kill(runtime.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }

  const plans = qemuPlans({
    binary,
    machine: opts.machine,
    tcgTbSizeMiB: opts.tcgTbSizeMiB,
    sandbox: opts.sandbox,
    blkDriver: BLK_DRIVER,
    accel: async () => {
      const p = await probe();
      if (!p.available || !p.accel)
        throw new MvirtError(
          'BACKEND_UNAVAILABLE',
          `QEMU cannot run VMs here: ${p.reason ?? 'unknown'}`,
        );
      return p.accel as QemuAccel;
    },
  });

  return {
    name: QEMU_BACKEND,
    capabilities,
    plans,
    probe,
    probeDetails,
    confinement: confiner.state,
    launch,
    identify,
    attach,
    dispose,
    stateProblem: states.problem,
    disposeOrphans: async (vmRoot, known, l) => {
      const ended = disposeOrphans(vmRoot, known, l);
      // RAM files of VMs whose QEMU is gone (killed above, or while mvirtd was down).
      const freed = await ram.sweep();
      if (freed.length > 0) l.info({ files: freed }, 'removed RAM files no QEMU maps');
      return ended;
    },
  };
}
