/**
 * The one seam between the agent's core and the operating system. Everything
 * the core needs from Linux goes through here so that unit tests can run the
 * core with an in-memory platform (and, where it makes sense, real processes).
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import type { Channel, JobLimits, JobUsage } from '../../protocol/agent.js';
import type { ImageRuntime } from '../../protocol/image.js';
import type { GuestFs } from './files.js';

/**
 * What the core needs from a spawned process (a structural subset of
 * ChildProcess). Its pid and streams are there from its 'spawn' event on
 * (a job the launcher starts has them only then: ./launcher.ts).
 */
export interface Proc {
  /** Undefined when the spawn failed; the error then arrives as an 'error' event. */
  readonly pid?: number | undefined;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  on(event: 'exit', fn: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(event: 'close', fn: () => void): this;
  on(event: 'spawn', fn: () => void): this;
  on(event: 'error', fn: (err: Error) => void): this;
}

export interface SpawnRequest {
  argv: readonly string[];
  env: Record<string, string>;
  cwd?: string | undefined;
  /** A group's process file (LimitedJobGroup.procs) the job enters before its command runs. */
  enterGroup?: string | undefined;
}

/** Where and how to dial home; resolved from the settings. */
export type ChannelSpec =
  | { kind: 'virtio-serial'; portName: string; device?: string | undefined }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'vsock'; cid: number; port: number };

export type PowerAction = 'poweroff' | 'reboot';

export interface StatFs {
  totalBytes: number;
  usedBytes: number;
}

/** A job's own resource group (Linux: a cgroup v2 under `jobs/`, see cgroups.ts). */
export interface JobGroup {
  /** OOM kills inside this job's group so far; null when unreadable. */
  oomKills(): Promise<number | null>;
  /** CPU time and peak memory of the job so far; null when unreadable. */
  usage(): Promise<JobUsage | null>;
  /** Remove the group; one that still holds processes is left for a later sweep. */
  remove(): Promise<void>;
}

/** A job's group made before the job starts, with its limits if it has any. */
export interface LimitedJobGroup extends JobGroup {
  /** What SpawnRequest.enterGroup takes. */
  procs: string;
}

/** Bridged mode: what the NIC of a restored VM must take (protocol Identity.net). */
export interface NicConfig {
  mac: string;
  /** ADDR/PREFIX */
  ip: string;
  gw?: string | undefined;
  dns?: string | undefined;
}

export interface Platform {
  /** Spawn `argv` in its own process group with piped stdio. */
  spawn(req: SpawnRequest): Proc;
  /**
   * A job's own resource group, made before its spawn, with the job's limits
   * (none: `{}`); the job enters it as it starts (SpawnRequest.enterGroup).
   * Rejects saying why it cannot be had (no groups in this guest, or limits
   * it cannot enforce).
   */
  limitedGroup(jobId: string, limits: JobLimits): Promise<LimitedJobGroup>;
  /** Signal a whole process group; false when it no longer exists. */
  killGroup(pgid: number, signal: NodeJS.Signals): boolean;
  /** Names in a folder (usually under /sys), or none when it cannot be read. */
  listDir(path: string): Promise<string[]>;
  /** Text of a (usually /proc or /run) file, or null when it does not exist. */
  readText(path: string): Promise<string | null>;
  statfs(path: string): Promise<StatFs | null>;
  /** The kernel command line. */
  cmdline(): Promise<string>;
  /** `uname -r` and the hostname. */
  uname(): { release: string; hostname: string };
  /** Open a byte stream to the host; rejects when the channel cannot be opened right now. */
  openChannel(spec: ChannelSpec): Promise<Duplex>;
  /**
   * A TCP connection to 127.0.0.1:port in this guest (a port-forward stream,
   * guest-agent/ports.ts); resolves once connected. Absent: forwards are refused.
   */
  connectLoopback?(port: number): Promise<Duplex>;
  /** Ask init to power off or reboot the machine. */
  power(action: PowerAction): Promise<void>;
  /**
   * The identity the hypervisor hands this VM (QEMU fw_cfg, protocol
   * FW_CFG_IDENTITY), raw; null when there is none (no fw_cfg file).
   */
  readIdentity(): Promise<Buffer | null>;
  /**
   * Step the wall clock so that it reads `nowMs` (ms since the epoch, true as
   * of this call). Resolves with how far off it still is (wall − true, ms).
   */
  setClock(nowMs: number): Promise<number>;
  /**
   * The agent is connected and idle: start what setClock and friends use
   * later (the helper shell), off the boot's path to `ready`.
   */
  prepare?(): void;
  /** Mix bytes into the kernel's random pool (without crediting entropy). */
  mixEntropy(bytes: Uint8Array): Promise<void>;
  /** Set the kernel's hostname (nodename). */
  setHostname(name: string): Promise<void>;
  /** Give the VM's one NIC this MAC, address, default route and DNS server. */
  configureNic(net: NicConfig): Promise<void>;
  /** tty jobs (guest-agent/tty.ts): the pty helper their argv is wrapped with, and where it reads window sizes. */
  readonly tty: { helper: string; sizeDir: string };
  /** Replace a small file's text at once (a reader sees the old or the new), making its folder. */
  writeText(path: string, text: string): Promise<void>;
  /** Remove a file; one that is not there is no error. */
  removeFile(path: string): Promise<void>;
  /** File access for the fs.* messages; absent: they are refused. */
  fs?: GuestFs;
  /** Base environment for jobs (exec.env is layered on top). */
  jobEnv(): Record<string, string>;
  /**
   * The imported container image jobs run in (spawn enters its root), whose
   * Env, WorkingDir and Entrypoint are the jobs' defaults; null or absent:
   * jobs run in the µOS.
   */
  readonly image?: ImageRuntime | null;
  readonly clock: {
    /** Wall clock, ms since the epoch. */
    now(): number;
    /** Seconds since the kernel started (/proc/uptime). */
    uptimeS(): number;
    /** Seconds since the kernel started at the moment this process was exec'd. */
    processStartS(): number;
  };
}

/** A channel this build cannot open (vsock: Node has no AF_VSOCK). */
export class UnsupportedChannelError extends Error {
  readonly channel: Channel;
  constructor(channel: Channel, why: string) {
    super(`unsupported channel ${channel}: ${why}`);
    this.name = 'UnsupportedChannelError';
    this.channel = channel;
  }
}
