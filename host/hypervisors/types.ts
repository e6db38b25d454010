/**
 * The one small interface every hypervisor backend implements. Nothing outside
 * `hypervisors/` asks which backend a VM runs on: callers look at
 * `capabilities` instead.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Channel } from '../../protocol/agent.js';

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
}

export interface ProbeResult {
  available: boolean;
  /** 'kvm' | 'tcg' | … ; null when unavailable. */
  accel: string | null;
  reason?: string;
}

export interface DiskSpec {
  path: string;
  readOnly: boolean;
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
  network: { mode: 'none' | 'user' | 'bridge'; tap?: string; mac?: string };
  /** Bytes of serial console kept in `<dir>/console.log` (ring-trimmed). */
  consoleLogBytes: number;
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

export interface RunningVm {
  readonly runtime: VmRuntime;
  pause(): Promise<void>;
  resume(): Promise<void>;
  reboot(): Promise<void>;
  /** Ask the guest OS to power off (ACPI). Resolves once the request is delivered. */
  powerdown(): Promise<void>;
  /** The hypervisor's view: 'running' | 'paused' | 'shutdown' | … */
  status(): Promise<string>;
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
}

export interface Hypervisor {
  readonly name: string;
  readonly capabilities: HypervisorCapabilities;
  probe(): Promise<ProbeResult>;
  launch(spec: LaunchSpec, log: Logger): Promise<RunningVm>;
  /** Re-attach to a VM that outlived the daemon; throws when it is gone or not ours. */
  attach(runtime: VmRuntime, dir: string, log: Logger): Promise<RunningVm>;
}
