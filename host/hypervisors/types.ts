/**
 * The one small interface every hypervisor backend implements. Nothing outside
 * `hypervisors/` asks which backend a VM runs on: callers look at
 * `capabilities` instead (and check them with requireCapability() in
 * index.ts before an operation, so that a backend never sees a call it lacks).
 */
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Channel } from '../../protocol/agent.js';
import type { PlanCommand } from '../../protocol/plan.js';

export interface HypervisorCapabilities {
  /** Agent channels this backend can provide, best first. */
  channels: readonly Channel[];
  pause: boolean;
  reboot: boolean;
  /** Can ask the guest OS to power off (ACPI powerdown or equivalent). */
  gracefulShutdown: boolean;
  /** Serial console reachable as a stream. */
  console: boolean;
  /** Kernel + initrd direct boot. */
  directKernelBoot: boolean;
  /**
   * Kernel files it can boot directly, best first: `bzImage` (an image's own
   * kernel file) or `elf` (a vmlinux with a PVH entry, derived from the
   * bzImage on first use: images/vmlinux.ts).
   */
  kernelFormats: readonly KernelFormat[];
  /** Disks added to and removed from a running VM (RunningVm.hotplug). */
  hotplugDisks: boolean;
  /** Internal snapshots of a qcow2 disk taken and deleted while the VM runs (RunningVm.diskSnapshot). */
  liveDiskSnapshots?: boolean;
  /**
   * The VM's memory and device state saved to a file (RunningVm.saveState)
   * and a new process resumed from it (LaunchSpec.restore) instead of booting.
   */
  snapshots?: boolean;
  /**
   * A saved state resumes as another VM (vm.snapshot, forks, template pools):
   * the guest reads who it is now after the restore (LaunchSpec.identity;
   * QEMU: fw_cfg). Without it a state resumes only as the VM it was saved
   * from (vm.suspend).
   */
  forks?: boolean;
  /**
   * Accelerators it can run guests with, best first (`kvm`, `tcg`). Which one
   * this host has is the probe's `accel`.
   */
  accel: readonly string[];
}

export type KernelFormat = 'bzImage' | 'elf';

/** The yes/no capabilities (channels, kernel formats and accelerators are lists, checked at boot). */
export type Capability = Exclude<
  keyof HypervisorCapabilities,
  'channels' | 'accel' | 'kernelFormats'
>;

export interface ProbeResult {
  available: boolean;
  /** 'kvm' | 'tcg' | … ; null when unavailable. */
  accel: string | null;
  reason?: string;
  /** Hypervisor program version (e.g. `QEMU emulator version 7.2.22 …`), when known. */
  version?: string | null;
  /** Backend-specific probe facts for system.info (QEMU: per-accelerator result and timing). */
  details?: Record<string, unknown>;
  /** How the backend's hypervisor processes are confined on this host (shown in system.info). */
  confinement?: HypervisorConfinement;
}

/** Each part false/null when off, with the reasons; never off silently. */
export interface HypervisorConfinement {
  /** Runs as an unprivileged user of its own (not mvirtd's). */
  user: boolean;
  /** The cgroup hierarchy limiting its CPU, memory and pids, or null. */
  cgroup: 'v2' | 'v1' | null;
  /** Under a seccomp filter. */
  seccomp: boolean;
  /** chroot plus new pid and mount namespaces (Firecracker's jailer); absent where there is no such launcher. */
  jail?: boolean;
  reasons: string[];
}

export interface DiskSpec {
  path: string;
  readOnly: boolean;
  /** Default raw (the image's root disk, the seed). */
  format?: 'raw' | 'qcow2';
  /** virtio-blk serial (at most 20 bytes): the guest's /dev/disk/by-id/virtio-<serial>. */
  serial?: string;
  /**
   * A file other VMs may open too (a volume attached read-only): the VM's
   * user may read it, never own it. Templates in `backing` are always shared.
   */
  shared?: boolean;
  /** The file name (volumes: `<id>.<format>`), where it differs from the path's. */
  name?: string;
  /**
   * qcow2 overlays: the template files QEMU opens read-only through the
   * overlay's relative backing reference, nearest first.
   */
  backing?: { path: string; name: string }[];
}

export interface LaunchSpec {
  vmId: string;
  vcpus: number;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  /** Kernel command line without the mvirt.* keys; the backend appends its channel keys. */
  cmdline: string;
  disks: DiskSpec[];
  /** Per-VM folder (`<data-dir>/vm/<id>`): sockets, logs and config go here. */
  dir: string;
  channel: Channel;
  /** Extra `mvirt.*` kernel arguments (vm id, topic root); never secrets. */
  agentArgs: Record<string, string>;
  /**
   * user + socket: a stream netdev the backend connects to at `socket` (the
   * VM's passt listens there); user without socket: slirp with restrict=on
   * (no outbound, no host).
   */
  network: { mode: 'none' | 'user' | 'bridge'; tap?: string; mac?: string; socket?: string };
  /** Bytes of serial console kept in `<dir>/console.log` (ring-trimmed). */
  consoleLogBytes: number;
  /**
   * Who the VM is (protocol/agent.ts encodeIdentity, IDENTITY_BYTES): handed
   * to the guest where it can read it again after a restore (QEMU: fw_cfg).
   */
  identity?: Uint8Array;
  /**
   * Resume from saved state instead of booting: the file RunningVm.saveState
   * wrote and what it said about it. The rest of the spec must describe the
   * same machine (stateProblem() says whether it does).
   */
  restore?: {
    /** The folder RunningVm.saveState wrote (its `state.files`). */
    dir: string;
    state: SavedState;
    /** Awaited once the state is loaded and before the guest runs: its rejection ends the launch. */
    check?: Promise<void>;
    /**
     * Run with the NIC's link down until setLink(true): a fork wakes with its
     * source's MAC and address, and must not use them on a shared bridge.
     */
    linkDown?: boolean;
  };
}

/**
 * What a saved state depends on: a process resumed from it must be the same
 * hypervisor build, machine type and devices. Recorded with every snapshot.
 */
export interface SavedState {
  backend: string;
  /** The hypervisor's exact version (QEMU: `query-version`'s package and numbers). */
  version: string;
  /** The resolved machine type (`pc` is an alias: `pc-i440fx-7.2`). */
  machine: string;
  memoryMiB: number;
  vcpus: number;
  /** sha256 of the device layout the guest saw (disks, NIC, channel, console), not of per-VM paths. */
  devices: string;
  /**
   * How guest RAM was saved: `stream` (inside the state file) or `file` (the
   * VM's RAM is a file, copied beside it as ram.bin): a state resumes only
   * into a process that keeps RAM the same way.
   */
  ram: 'stream' | 'file';
  /** The files written into the state's folder (name → bytes): state.bin, and ram.bin for `file`. */
  files: Record<string, number>;
  /** All of them together. */
  bytes: number;
}

/** What must be persisted to re-attach to a running VM after a daemon restart. */
export interface VmRuntime {
  backend: string;
  pid: number;
  /** Process start time in clock ticks since boot (/proc/<pid>/stat field 22): guards against pid reuse. */
  startTime: number;
  accel: string;
  /** Backend-specific socket paths (control, console, agent…). */
  sockets: Record<string, string>;
}

export type ExitInfo = { code: number | null; signal: string | null; reason: string };

/**
 * The hypervisor's view of the VM, backend-neutral. `starting`: created but
 * not yet running guest code; `crashed`: guest panic or hypervisor internal
 * error; `shutdown`: the guest is off (the process is about to exit).
 */
export type VmRunState = 'starting' | 'running' | 'paused' | 'shutdown' | 'crashed' | 'unknown';

/** Things the hypervisor tells about the VM while it runs (QEMU: QMP events). */
export type VmEvent =
  | {
      type: 'shutdown';
      at: number;
      /** who asked: 'guest-shutdown', 'host-qmp-quit', 'host-signal', … */ reason: string;
    }
  | { type: 'reset'; at: number; /** true when the guest itself rebooted */ guest: boolean }
  | { type: 'paused'; at: number }
  | { type: 'resumed'; at: number }
  | { type: 'powerdown'; at: number }
  | { type: 'panicked'; at: number };

/**
 * Why attach() refused, in `MvirtError.details.reason` (code HYPERVISOR_ERROR):
 * 'gone' (no such process, or a zombie), 'pid-reused' (start time differs),
 * 'not-ours' (the process is not this backend's hypervisor for that folder),
 * 'control-unreachable' (ours and alive, but its control socket does not answer).
 */
export type AttachFailureReason = 'gone' | 'pid-reused' | 'not-ours' | 'control-unreachable';

/**
 * A backend's answer about a leftover process (a runtime row of a previous
 * daemon): 'ours' when it runs and is this backend's hypervisor of that VM
 * folder, else why not.
 */
export type Ownership = 'ours' | Exclude<AttachFailureReason, 'control-unreachable'>;

/**
 * Disks on a running VM, one call per step so the VM manager can run them as
 * named steps with rollback (vm/hotplug.ts). Every name the hypervisor knows a
 * disk by is derived from its serial (the volume id), so nothing about a
 * hot-plugged disk needs persisting: after a daemon restart the re-attached
 * VM's disks are found again by their serials.
 */
export interface DiskHotplug {
  /** Give a file linked into the VM's folder to the VM's user, exactly as a boot does. */
  handOver(disk: DiskSpec): Promise<void>;
  /** Open the disk's file (and format) in the hypervisor; nothing is visible to the guest yet. */
  addBackend(disk: DiskSpec): Promise<void>;
  /** Close what addBackend opened; done already (nothing open) is no error. */
  removeBackend(serial: string): Promise<void>;
  /** Plug the virtio-blk device (with `serial`) the guest then sees. */
  plug(disk: DiskSpec): Promise<void>;
  /**
   * Ask the guest to release the device and wait for the hypervisor to say it
   * is gone; DISK_BUSY after `timeoutMs` (the device then stays). A device
   * already gone is no error.
   */
  unplug(serial: string, timeoutMs: number): Promise<void>;
}

export interface RunningVm {
  readonly runtime: VmRuntime;
  /** Present when the backend has the hotplugDisks capability. */
  readonly hotplug?: DiskHotplug;
  pause(): Promise<void>;
  resume(): Promise<void>;
  reboot(): Promise<void>;
  /** Ask the guest OS to power off (ACPI). Resolves once the request is delivered. */
  powerdown(): Promise<void>;
  /** The hypervisor's view of the VM. */
  status(): Promise<VmRunState>;
  /** Connect the agent channel's host end; resolves with a byte stream speaking MQTT. */
  connectAgent(): Promise<Duplex>;
  /** Connect the serial console (bidirectional). */
  connectConsole(): Promise<Duplex>;
  /** Send a signal to the hypervisor process. */
  signal(sig: NodeJS.Signals): void;
  /** Resolves once the hypervisor process is gone (for adopted processes too). */
  readonly exited: Promise<ExitInfo>;
  /** Drop control connections without touching the VM (daemon shutdown). */
  detach(): Promise<void>;
  /**
   * Stop the hypervisor at once through its control API (QEMU: QMP `quit`);
   * the guest gets no say. Resolves when the request is accepted; await
   * `exited` for the end. Optional: a backend without it is stopped by signal().
   */
  quit?(): Promise<void>;
  /**
   * Take (`create`) or delete an internal snapshot of the running VM's qcow2
   * disk whose file is named `file` (`<volume id>.qcow2`), without stopping
   * the guest. Only where `capabilities.liveDiskSnapshots` says so.
   */
  diskSnapshot?(action: 'create' | 'delete', file: string, name: string): Promise<void>;
  /**
   * Pause the guest and write its memory and device state into the folder
   * `dir` (which exists and holds none of the files yet; nothing is ever
   * overwritten). The VM stays paused: resume() it (a snapshot) or quit() it
   * (suspend). Only where `capabilities.snapshots` says so.
   */
  saveState?(dir: string, spec: StateSpec): Promise<SavedState>;
  /** The guest NIC's link up or down (the guest sees the carrier change). Where `snapshots`. */
  setLink?(up: boolean): Promise<void>;
  /** Subscribe to hypervisor events; returns the unsubscribe function. Optional. */
  onEvent?(listener: (event: VmEvent) => void): () => void;
}

/** Operations on a running VM a dry run may describe. */
export type ControlOp = 'pause' | 'resume' | 'reboot' | 'powerdown' | 'quit';

/**
 * What a dry run shows of this backend's work (protocol/plan.ts): the
 * process it would start and the control commands it would send. Nothing
 * here starts, opens or writes anything.
 */
export interface HypervisorPlans {
  /** The hypervisor's argv for this spec and the files it would make in the VM's folder. */
  launch(spec: LaunchSpec): Promise<{ argv: string[]; files: string[] }>;
  control(op: ControlOp): PlanCommand[];
  /** Hot-plug of a disk (with its serial) linked into the VM's folder, and its removal. */
  attachDisk(disk: DiskSpec): PlanCommand[];
  detachDisk(serial: string): PlanCommand[];
  /** RunningVm.diskSnapshot of the disk file named `file` (where liveDiskSnapshots). */
  diskSnapshot(action: 'create' | 'delete', file: string, name: string): PlanCommand[];
}

/** The parts of a launch spec a saved state depends on (a fork's spec must match). */
export type StateSpec = Pick<LaunchSpec, 'memoryMiB' | 'vcpus' | 'disks' | 'network' | 'channel'>;

export interface Hypervisor {
  readonly name: string;
  readonly capabilities: HypervisorCapabilities;
  /** Dry runs; a backend without them is planned by step names alone. */
  readonly plans?: HypervisorPlans;
  probe(): Promise<ProbeResult>;
  launch(spec: LaunchSpec, log: Logger): Promise<RunningVm>;
  /**
   * Recovery, first question: is the process of this runtime row (left by a
   * previous daemon) alive and this backend's own hypervisor of `dir`? Only
   * looks (pid, start time, command line); never signals anything.
   */
  identify(runtime: VmRuntime, dir: string): Ownership;
  /**
   * Re-adopt a VM that outlived the daemon; throws MvirtError
   * HYPERVISOR_ERROR with `details.reason: AttachFailureReason` when it is
   * gone, not ours, or ours but out of reach.
   */
  attach(runtime: VmRuntime, dir: string, log: Logger): Promise<RunningVm>;
  /**
   * Recovery of a leftover process that is not re-adopted (its VM is not up,
   * or attach() failed): end it, no orphans. Does nothing unless identify()
   * says 'ours' (a pid that now belongs to someone else is never signalled).
   * Resolves once it was told to go.
   */
  dispose(runtime: VmRuntime, dir: string, log: Logger): Promise<void>;
  /**
   * Recovery, last: this backend's hypervisor processes of VM folders under
   * `vmRoot` that no runtime row names (`known`), e.g. launched by a daemon
   * killed before it recorded them (a restore's state was loading): ended,
   * no orphans. Returns the pids it ended.
   */
  disposeOrphans?(vmRoot: string, known: ReadonlySet<number>, log: Logger): Promise<number[]>;
  /**
   * Why a process launched with `spec` could not resume from `state` (other
   * version, machine type, size or devices), or null when it can. Where
   * `capabilities.snapshots`.
   */
  stateProblem?(state: SavedState, spec: StateSpec): Promise<string | null>;
}
