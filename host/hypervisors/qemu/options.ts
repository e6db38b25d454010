/**
 * What the QEMU backend is told by mvirtd (or a test), and its defaults.
 */
import type { QemuAccel, QemuMachine } from './args.js';
import { DEFAULT_UID_BASE, DEFAULT_UID_COUNT } from './confine.js';

export interface QemuBackendOptions {
  /** Default `qemu-system-x86_64` (looked up on PATH). */
  binary?: string;
  /** 'auto' probes KVM and falls back to TCG. */
  accel?: 'auto' | QemuAccel;
  machine?: QemuMachine;
  kvmProbeTimeoutMs?: number;
  tcgProbeTimeoutMs?: number;
  /** From spawn until QMP answers; generous: a loaded 2-core host is slow to exec QEMU. */
  launchTimeoutMs?: number;
  agentConnectTimeoutMs?: number;
  tcgTbSizeMiB?: number;
  sandbox?: boolean;
  /**
   * Run each QEMU as its VM's own uid in its own cgroup (confine.ts); needs
   * root. false, or mvirtd not root: QEMU runs as mvirtd's user, said once
   * at start and shown in system.info.
   */
  confine?: boolean;
  /** First of the uids reserved for VMs, and how many. */
  uidBase?: number;
  uidCount?: number;
  /** The launcher that drops privileges (util-linux). */
  setpriv?: string;
  /** console.log cap for re-attached VMs (the spec's value is not persisted). */
  consoleLogBytes?: number;
  /**
   * Guest RAM as files in this folder (tmpfs), so that a saved state is the
   * device state plus a copy of the file (ram.ts); null: anonymous RAM.
   */
  ramDir?: string | null;
  /**
   * The agent over vsock where /dev/vhost-vsock exists (vsock.ts): the
   * folder of the per-CID sockets, and where the host relay is built; null:
   * no vsock.
   */
  vsockDir?: string | null;
  helperCacheDir?: string | null;
  /** The vhost-vsock device (tests point it elsewhere). */
  vhostVsockDevice?: string;
}

export const QEMU_DEFAULTS = {
  binary: 'qemu-system-x86_64',
  accel: 'auto',
  machine: 'pc',
  kvmProbeTimeoutMs: 3000,
  tcgProbeTimeoutMs: 15_000,
  launchTimeoutMs: 30_000,
  agentConnectTimeoutMs: 5000,
  tcgTbSizeMiB: 128,
  sandbox: true,
  confine: true,
  uidBase: DEFAULT_UID_BASE,
  uidCount: DEFAULT_UID_COUNT,
  setpriv: 'setpriv',
  consoleLogBytes: 1024 * 1024,
  ramDir: null,
  vsockDir: null,
  helperCacheDir: null,
  vhostVsockDevice: '/dev/vhost-vsock',
} as const;
