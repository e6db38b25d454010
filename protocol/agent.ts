/**
 * The private agent channel: messages between mvirt-agent (guest) and mvirtd
 * (host), CBOR-encoded, on `<root>/agent/<vmId>/{up,down}/<kind>`.
 * Every message is validated on receipt; unknown fields are rejected, so a
 * guest cannot smuggle data through and an old agent notices a new field.
 */
import * as z from 'zod';
import type { AgentDownKind, AgentUpKind } from './topics.js';
import { PRINTABLE, PRINTABLE_WORD } from './inert.js';
import { SIGNALS } from './states.js';
import { AgentId } from './ids.js';
import { Resize, TtySize } from './tty.js';
import { FS_AGENT_DOWN } from './fs.js';
import { PortDown, PortUp } from './ports.js';

/** Bumped when the agent channel changes incompatibly. */
export const AGENT_PROTOCOL_VERSION = 1;

const bytes = z.instanceof(Uint8Array);
const id = AgentId;
const jobId = id;
const reqId = id;
/** Times and durations: finite, and exact as doubles (sums of two stay finite). */
const ms = z.number().finite().nonnegative().max(Number.MAX_SAFE_INTEGER);

// ------------------------------------------- what a guest may choose, bounded
//
// Names a genuine agent reads from the kernel (version, uname, hostname,
// interface names, mount points) never hold a control, C1 or bidi character:
// one that does is refused (the message is dropped). Free text (log lines,
// error messages) may hold anything a program printed: only its length is
// bounded here, and host/agent/link.ts makes it inert (protocol/inert.ts)
// before anyone stores, logs or shows it, so the record is not lost.
const printable = (max: number) =>
  z.string().max(max).regex(PRINTABLE, 'control, C1 or bidi characters are not allowed');
const word = (max: number) =>
  z.string().max(max).regex(PRINTABLE_WORD, 'spaces, control or bidi characters are not allowed');
/** A version string: `0.4.1`, `0.4.1+git.abc`, `1.0~rc1`. */
const version = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[0-9A-Za-z][0-9A-Za-z.+~_-]*$/, 'a version is letters, digits and . + ~ _ -');

/**
 * Upper bounds of guest figures that no VM can exceed (beyond them the sample
 * is refused: the agent is broken or hostile). Figures within them that still
 * exceed what this VM has (CPU above 100 % per vCPU, memory above its size)
 * are clamped by the host (host/metrics/bounds.ts), because sampling jitter
 * makes honest agents overshoot a little and the rest of the sample is good.
 */
export const TELEMETRY_LIMITS = {
  /** 100 per vCPU; QEMU's own maximum is 1024 vCPUs (x86 q35 with x2apic: 288; ours far fewer). */
  cpuPercent: 100 * 1024,
  /** 16 TiB of guest memory, in MiB: memory × 2^20 stays a finite, exact number. */
  memMiB: 16 * 1024 * 1024,
  /** Byte and packet counters: exact as doubles up to 2^53. */
  counter: Number.MAX_SAFE_INTEGER,
  /** Load averages: runnable tasks, at most the kernel's PID_MAX_LIMIT (2^22). */
  load: 4 * 1024 * 1024,
  procs: 4 * 1024 * 1024,
  /** A century of uptime. */
  uptimeS: 100 * 365 * 86400,
} as const;
const counter = z.number().nonnegative().max(TELEMETRY_LIMITS.counter);

export { SIGNALS };

// ---------------------------------------------------------------- guest → host

/** Seconds since kernel start (from /proc/uptime) at each boot milestone. */
const uptime = z.number().nonnegative().max(TELEMETRY_LIMITS.uptimeS);
export const BootTimeline = z.strictObject({
  initS: uptime,
  agentStartS: uptime,
  connectedS: uptime,
});
export type BootTimeline = z.infer<typeof BootTimeline>;

/**
 * What an agent did when it found itself restored from a snapshot (its
 * identity's generation changed while it ran): reported in the next hello.
 */
export const RestoreReport = z.strictObject({
  /** The identity generation before and now. */
  fromGeneration: z.number().int().nonnegative(),
  generation: z.number().int().nonnegative(),
  /** Who the agent was (the snapshot's source VM) and now is. */
  previous: z.strictObject({ vmId: id, hostname: word(64) }),
  /** Host entropy written into the kernel pool (/dev/urandom), in bytes. */
  entropyBytes: z.number().int().nonnegative().max(4096),
  /**
   * The NIC took the identity's MAC and address (bridged mode), or not:
   * `pending` while it is being done (the sync reply then says how it went).
   */
  network: z.enum(['applied', 'none', 'failed', 'pending']),
  /** Jobs of the previous identity the agent ended (they belong to another VM's records). */
  jobsDropped: z.number().int().nonnegative().max(4096),
});
export type RestoreReport = z.infer<typeof RestoreReport>;

export const Hello = z.strictObject({
  protocol: z.number().int(),
  agentVersion: version,
  /** `uname -r`. */
  kernel: printable(256),
  /** The kernel's nodename (busybox sets none: `(none)`). */
  hostname: word(256),
  pid: z.number().int(),
  boot: BootTimeline,
  /** Jobs still known to the agent (running or finished, not yet acknowledged): lets the host resume after a reconnect. */
  jobs: z
    .array(
      z.strictObject({ jobId, state: z.enum(['running', 'exited']), lastSeq: z.number().int() }),
    )
    .max(1024),
  /** The identity generation the agent runs with (absent: no identity, a booted µOS without one). */
  generation: z.number().int().nonnegative().optional(),
  /** Present on the first hello after the agent found itself restored. */
  restored: RestoreReport.optional(),
});
export type Hello = z.infer<typeof Hello>;

export const Ready = z.strictObject({ at: ms });
export type Ready = z.infer<typeof Ready>;

export const Reply = z.strictObject({
  id: reqId,
  ok: z.boolean(),
  result: z.unknown().optional(),
  error: z
    .strictObject({
      code: z
        .string()
        .max(64)
        .regex(/^[A-Z][A-Z0-9_]*$/, 'an error code is capitals, digits and _'),
      message: z.string().max(4096),
    })
    .optional(),
});
export type Reply = z.infer<typeof Reply>;

export const Output = z.strictObject({
  jobId,
  seq: z.number().int().nonnegative(),
  stream: z.enum(['stdout', 'stderr']),
  data: bytes,
});
export type Output = z.infer<typeof Output>;

/**
 * A job's own limits, enforced by its cgroup in the guest: `memoryMiB` its
 * memory.max (the job's processes together; past it the job alone is
 * OOM-killed), `cpus` its cpu.max (0.5: half of one CPU's time).
 */
export const JobLimits = z
  .strictObject({
    memoryMiB: z.number().int().min(4).max(1_048_576).optional(),
    cpus: z.number().min(0.01).max(256).optional(),
  })
  .refine((l) => l.memoryMiB !== undefined || l.cpus !== undefined, 'give memoryMiB, cpus or both');
export type JobLimits = z.infer<typeof JobLimits>;

/**
 * What a job used, read from its cgroup as it ended (absent in a guest
 * without groups, or for a job that ended before it was placed). A job with
 * limits is counted from its start (it enters its group before its command
 * runs); one without is moved in just after its spawn, so its first few
 * milliseconds are not counted: entering first costs every job one more exec
 * (a warm `/bin/true` job 68 → 75 ms under TCG).
 */
export const JobUsage = z.strictObject({
  /** CPU time of all the job's processes (cpu.stat usage_usec). */
  cpuMs: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** The most memory the job held at once (memory.peak). */
  peakMemoryBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
});
export type JobUsage = z.infer<typeof JobUsage>;

export const Exit = z.strictObject({
  jobId,
  /** Number of output chunks sent before this record (the next seq). */
  seq: z.number().int().nonnegative(),
  exitCode: z.number().int().nullable(),
  signal: z
    .string()
    .max(16)
    .regex(/^SIG[A-Z0-9+-]+$/, 'a signal name such as SIGKILL')
    .nullable(),
  oomKilled: z.boolean(),
  timedOut: z.boolean(),
  usage: JobUsage.optional(),
  /** Set when the process could not be started at all (ENOENT, EACCES…). */
  error: z.string().max(4096).optional(),
  startedAt: ms,
  finishedAt: ms,
});
export type Exit = z.infer<typeof Exit>;

const NetCounters = z.strictObject({
  /** Linux keeps at most 15 bytes (IFNAMSIZ 16); 32 leaves room for other guests. */
  iface: word(32).min(1),
  rxBytes: counter,
  txBytes: counter,
  rxPackets: counter,
  txPackets: counter,
});
const DiskUsage = z.strictObject({
  /** As /proc/mounts spells it (a space is `\040` there). */
  mount: printable(256).min(1),
  totalBytes: counter,
  usedBytes: counter,
});

const BlockDevice = z.strictObject({
  /** As /sys/block names it (vda, vdb…). */
  name: word(32).min(1),
  /** The serial the host gave the disk: a volume's id. */
  serial: printable(20).min(1).optional(),
  sizeBytes: counter,
  readOnly: z.boolean(),
  /** Where it (or a partition of it) is mounted; its usage is under `disk`. */
  mount: printable(256).min(1).optional(),
  /** The mounted file system's size and use (blockDevices replies; telemetry has them under `disk`). */
  totalBytes: counter.optional(),
  usedBytes: counter.optional(),
});
export type BlockDevice = z.infer<typeof BlockDevice>;

/** The agent's answer to `blockDevices`: what /sys/block lists now. */
export const BlockDevicesResult = z.strictObject({
  blockDevices: z.array(BlockDevice).max(32),
});
export type BlockDevicesResult = z.infer<typeof BlockDevicesResult>;

export const Telemetry = z.strictObject({
  at: ms,
  cpuPercent: z.number().min(0).max(TELEMETRY_LIMITS.cpuPercent),
  memUsedMiB: z.number().nonnegative().max(TELEMETRY_LIMITS.memMiB),
  memTotalMiB: z.number().nonnegative().max(TELEMETRY_LIMITS.memMiB),
  load1: z.number().nonnegative().max(TELEMETRY_LIMITS.load),
  load5: z.number().nonnegative().max(TELEMETRY_LIMITS.load),
  load15: z.number().nonnegative().max(TELEMETRY_LIMITS.load),
  uptimeS: uptime,
  procs: z.number().int().nonnegative().max(TELEMETRY_LIMITS.procs),
  disk: z.array(DiskUsage).max(32),
  net: z.array(NetCounters).max(32),
  /** Optional: agents of images built before it was added do not send it. */
  blockDevices: z.array(BlockDevice).max(32).optional(),
});
export type Telemetry = z.infer<typeof Telemetry>;

export const Log = z.strictObject({
  level: z.enum(['debug', 'info', 'warn', 'error']),
  message: z.string().max(4096),
});
export type Log = z.infer<typeof Log>;

export const AGENT_UP = {
  hello: Hello,
  ready: Ready,
  reply: Reply,
  output: Output,
  exit: Exit,
  telemetry: Telemetry,
  log: Log,
  port: PortUp,
} as const satisfies Record<AgentUpKind, z.ZodType>;

export type AgentUpMessage = { [K in AgentUpKind]: z.infer<(typeof AGENT_UP)[K]> };

// ---------------------------------------------------------------- host → guest

/** A job's command, environment and time limit: the same rules on the RPC and the agent channel. */
export const JobArgv = z.array(z.string().max(65536)).min(1).max(4096);
export const JobEnv = z.record(
  z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/)
    .max(256),
  z.string().max(65536),
);
export const JobTimeoutMs = z
  .number()
  .int()
  .positive()
  .max(7 * 24 * 3600 * 1000);

export const Exec = z.strictObject({
  id: reqId,
  jobId,
  argv: JobArgv,
  env: JobEnv.optional(),
  cwd: z.string().max(4096).optional(),
  /** Initial stdin; with `stdinOpen` more may follow as `stdin` messages. */
  stdin: bytes.optional(),
  stdinOpen: z.boolean().optional(),
  timeoutMs: JobTimeoutMs.optional(),
  limits: JobLimits.optional(),
  /** Run under a pseudo-terminal of this size (protocol/tty.ts); its output is all `stdout`. */
  tty: TtySize.optional(),
  /** Resume output after this seq (on redelivery after a reconnect). */
  fromSeq: z.number().int().nonnegative().optional(),
});
export type Exec = z.infer<typeof Exec>;

/**
 * With an `id`, the agent replies once the bytes are in the job's stdin pipe (backpressure): `{open}`;
 * for a tty job, once the output they caused (the echo) has gone out too, or 20 ms without output.
 */
export const Stdin = z.strictObject({
  id: reqId.optional(),
  jobId,
  data: bytes,
  eof: z.boolean().optional(),
});
export type Stdin = z.infer<typeof Stdin>;

export const Signal = z.strictObject({ id: reqId.optional(), jobId, signal: z.enum(SIGNALS) });
export type Signal = z.infer<typeof Signal>;

export const Power = z.strictObject({ id: reqId, action: z.enum(['poweroff', 'reboot']) });
export type Power = z.infer<typeof Power>;

export const Ping = z.strictObject({ id: reqId, data: bytes.optional() });
export type Ping = z.infer<typeof Ping>;

/**
 * The reply to a ping: its `data` back, and the guest's wall clock when it
 * answered, so that the host can read the guest's clock the way NTP does
 * (host/vm/clock-probe.ts).
 */
export const PingResult = z.strictObject({ data: bytes.optional(), wallMs: ms });
export type PingResult = z.infer<typeof PingResult>;

/** Runtime settings the host may push after hello (telemetry interval, …). */
export const Configure = z.strictObject({
  id: reqId,
  telemetryIntervalMs: z.number().int().min(100).max(3600_000).optional(),
});
export type Configure = z.infer<typeof Configure>;

/**
 * After a restore or a resume: step the wall clock by `stepMs` and mix
 * `entropy` into the kernel's pool. The reply's result is a SyncResult.
 *
 * The step is relative (host minus guest, as the host measured it with pings
 * just before): a message's time in flight does not enter it. An absolute
 * host time did, and under load that was hundreds of ms: a fork's clock was
 * left 468 ms behind in CI (2026-12-07).
 */
export const Sync = z.strictObject({
  id: reqId,
  stepMs: z.number().finite().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER),
  entropy: bytes.refine((b) => b.length >= 16 && b.length <= 256, 'entropy is 16 to 256 bytes'),
});
export type Sync = z.infer<typeof Sync>;

/**
 * The agent's clock step (guest-agent/platform/clock.ts says how): at most
 * `rounds` rounds, each waiting up to a second for the next whole one, then
 * running busybox `date`, whose latency counts up to `maxLatencyMs`; a round
 * that lands within `toleranceMs` is the last. mvirtd gives a sync that much
 * more time than an ordinary call (host/vm/restore.ts).
 */
export const CLOCK_STEP = { rounds: 3, maxLatencyMs: 500, toleranceMs: 20 } as const;

export const SyncResult = z.strictObject({
  /** How far the agent stepped the guest clock (the sync's stepMs, ms). */
  clockStepMs: z.number().finite(),
  entropyBytes: z.number().int().nonnegative().max(256),
  /** After a restore: how re-addressing the NIC went (awaited by the sync). */
  network: z.enum(['applied', 'none', 'failed']).optional(),
});
export type SyncResult = z.infer<typeof SyncResult>;

/** The guest's block devices now (the reply's result is a BlockDevicesResult). */
export const BlockDevicesRequest = z.strictObject({ id: reqId });

export const AGENT_DOWN = {
  exec: Exec,
  stdin: Stdin,
  signal: Signal,
  power: Power,
  ping: Ping,
  configure: Configure,
  blockDevices: BlockDevicesRequest,
  sync: Sync,
  resize: Resize,
  ...FS_AGENT_DOWN,
  port: PortDown,
} as const satisfies Record<AgentDownKind, z.ZodType>;

export type AgentDownMessage = { [K in AgentDownKind]: z.infer<(typeof AGENT_DOWN)[K]> };

/** Agent-side error codes in replies (a subset of the catalogue plus agent specifics). */
export const AGENT_ERROR = {
  BAD_MESSAGE: 'BAD_MESSAGE',
  UNKNOWN_KIND: 'UNKNOWN_KIND',
  JOB_NOT_FOUND: 'JOB_NOT_FOUND',
  SPAWN_FAILED: 'SPAWN_FAILED',
  /** Port forwarding: nothing answers on the guest port; too many streams open. */
  PORT_REFUSED: 'PORT_REFUSED',
  PORT_LIMIT: 'PORT_LIMIT',
  INTERNAL: 'INTERNAL',
} as const;

/**
 * Who a VM is, handed to its guest by the hypervisor where the kernel command
 * line cannot change: a restored VM keeps the command line (memory) of the VM
 * its snapshot was taken from. QEMU: the fw_cfg file FW_CFG_IDENTITY, which
 * the guest reads at /sys/firmware/qemu_fw_cfg/by_name/<name>/raw.
 *
 * Always exactly IDENTITY_BYTES long (JSON, space-padded): the guest's fw_cfg
 * driver lists each file's size once, at boot, and reads that many bytes
 * ever after, so every generation of a VM's identity has the same size.
 */
export const IDENTITY_BYTES = 1024;
export const FW_CFG_IDENTITY = 'opt/mvirt/identity';
export const Identity = z.strictObject({
  v: z.literal(1),
  /** 0 at a cold boot; each restore from saved state gets a higher one. */
  generation: z.number().int().nonnegative(),
  vmId: id,
  hostname: word(64),
  /** Random bytes, base64, fresh per generation: mixed into the guest's pool before anything runs. */
  entropy: z.string().max(512),
  /** The agent's token over TCP (bridged agentOverNetwork), per VM. */
  token: z.string().max(256).optional(),
  /** Bridged mode: the NIC's MAC and address (`10.1.2.3/24`), gateway and DNS. */
  net: z
    .strictObject({
      mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/),
      ip: z.string().max(64),
      gw: z.string().max(64).optional(),
      dns: z.string().max(64).optional(),
    })
    .optional(),
});
export type Identity = z.infer<typeof Identity>;

/** The identity as the guest reads it: JSON padded with spaces to IDENTITY_BYTES. */
export function encodeIdentity(identity: Identity): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(Identity.parse(identity)));
  if (json.length > IDENTITY_BYTES)
    throw new Error(`identity is ${json.length} bytes, more than ${IDENTITY_BYTES}`);
  const out = new Uint8Array(IDENTITY_BYTES).fill(0x20);
  out.set(json);
  return out;
}

/** Kernel command line keys the agent reads (`mvirt.<key>=value`). */
export const CMDLINE_KEYS = {
  vmId: 'mvirt.vm',
  channel: 'mvirt.channel',
  root: 'mvirt.root',
  addr: 'mvirt.addr',
  telemetryMs: 'mvirt.telemetry_ms',
  /** Guest network (read by the µOS init): ADDR/PREFIX, gateway, DNS server. */
  ip: 'mvirt.ip',
  gw: 'mvirt.gw',
  dns: 'mvirt.dns',
} as const;

export const CHANNELS = ['virtio-serial', 'tcp', 'vsock'] as const;
export type Channel = (typeof CHANNELS)[number];

/** The virtio-serial port name the QEMU backend exposes and the agent opens. */
export const VIRTIO_PORT_NAME = 'mvirt.agent';
export const VSOCK_HOST_CID = 2;
export const VSOCK_PORT = 1024;
