/**
 * The private agent channel: messages between mvirt-agent (guest) and mvirtd
 * (host), CBOR-encoded, on `<root>/agent/<vmId>/{up,down}/<kind>`.
 * Every message is validated on receipt; unknown fields are rejected, so a
 * guest cannot smuggle data through and an old agent notices a new field.
 */
import { z } from 'zod';
import type { AgentDownKind, AgentUpKind } from './topics.js';

/** Bumped when the agent channel changes incompatibly. */
export const AGENT_PROTOCOL_VERSION = 1;

const bytes = z.instanceof(Uint8Array);
const jobId = z.string().min(1).max(128);
const reqId = z.string().min(1).max(128);
const ms = z.number().finite().nonnegative();

export const SIGNALS = [
  'SIGTERM',
  'SIGKILL',
  'SIGINT',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGSTOP',
  'SIGCONT',
] as const;

// ---------------------------------------------------------------- guest → host

/** Seconds since kernel start (from /proc/uptime) at each boot milestone. */
export const BootTimeline = z.strictObject({
  initS: ms,
  agentStartS: ms,
  connectedS: ms,
});
export type BootTimeline = z.infer<typeof BootTimeline>;

export const Hello = z.strictObject({
  protocol: z.number().int(),
  agentVersion: z.string().max(64),
  kernel: z.string().max(256),
  hostname: z.string().max(256),
  pid: z.number().int(),
  boot: BootTimeline,
  /** Jobs still known to the agent (running or finished, not yet acknowledged): lets the host resume after a reconnect. */
  jobs: z
    .array(
      z.strictObject({ jobId, state: z.enum(['running', 'exited']), lastSeq: z.number().int() }),
    )
    .max(1024),
});
export type Hello = z.infer<typeof Hello>;

export const Ready = z.strictObject({ at: ms });
export type Ready = z.infer<typeof Ready>;

export const Reply = z.strictObject({
  id: reqId,
  ok: z.boolean(),
  result: z.unknown().optional(),
  error: z.strictObject({ code: z.string().max(64), message: z.string().max(4096) }).optional(),
});
export type Reply = z.infer<typeof Reply>;

export const Output = z.strictObject({
  jobId,
  seq: z.number().int().nonnegative(),
  stream: z.enum(['stdout', 'stderr']),
  data: bytes,
});
export type Output = z.infer<typeof Output>;

export const Exit = z.strictObject({
  jobId,
  /** Number of output chunks sent before this record (the next seq). */
  seq: z.number().int().nonnegative(),
  exitCode: z.number().int().nullable(),
  signal: z.string().max(16).nullable(),
  oomKilled: z.boolean(),
  timedOut: z.boolean(),
  /** Set when the process could not be started at all (ENOENT, EACCES…). */
  error: z.string().max(4096).optional(),
  startedAt: ms,
  finishedAt: ms,
});
export type Exit = z.infer<typeof Exit>;

const NetCounters = z.strictObject({
  iface: z.string().max(32),
  rxBytes: z.number().nonnegative(),
  txBytes: z.number().nonnegative(),
  rxPackets: z.number().nonnegative(),
  txPackets: z.number().nonnegative(),
});
const DiskUsage = z.strictObject({
  mount: z.string().max(256),
  totalBytes: z.number().nonnegative(),
  usedBytes: z.number().nonnegative(),
});

export const Telemetry = z.strictObject({
  at: ms,
  cpuPercent: z
    .number()
    .min(0)
    .max(100 * 1024),
  memUsedMiB: z.number().nonnegative(),
  memTotalMiB: z.number().nonnegative(),
  load1: z.number().nonnegative(),
  load5: z.number().nonnegative(),
  load15: z.number().nonnegative(),
  uptimeS: z.number().nonnegative(),
  procs: z.number().int().nonnegative(),
  disk: z.array(DiskUsage).max(32),
  net: z.array(NetCounters).max(32),
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
  /** Resume output after this seq (on redelivery after a reconnect). */
  fromSeq: z.number().int().nonnegative().optional(),
});
export type Exec = z.infer<typeof Exec>;

export const Stdin = z.strictObject({ jobId, data: bytes, eof: z.boolean().optional() });
export type Stdin = z.infer<typeof Stdin>;

export const Signal = z.strictObject({ id: reqId.optional(), jobId, signal: z.enum(SIGNALS) });
export type Signal = z.infer<typeof Signal>;

export const Power = z.strictObject({ id: reqId, action: z.enum(['poweroff', 'reboot']) });
export type Power = z.infer<typeof Power>;

export const Ping = z.strictObject({ id: reqId, data: bytes.optional() });
export type Ping = z.infer<typeof Ping>;

/** Runtime settings the host may push after hello (telemetry interval, …). */
export const Configure = z.strictObject({
  id: reqId,
  telemetryIntervalMs: z.number().int().min(100).max(3600_000).optional(),
});
export type Configure = z.infer<typeof Configure>;

export const AGENT_DOWN = {
  exec: Exec,
  stdin: Stdin,
  signal: Signal,
  power: Power,
  ping: Ping,
  configure: Configure,
} as const satisfies Record<AgentDownKind, z.ZodType>;

export type AgentDownMessage = { [K in AgentDownKind]: z.infer<(typeof AGENT_DOWN)[K]> };

/** Agent-side error codes in replies (a subset of the catalogue plus agent specifics). */
export const AGENT_ERROR = {
  BAD_MESSAGE: 'BAD_MESSAGE',
  UNKNOWN_KIND: 'UNKNOWN_KIND',
  JOB_NOT_FOUND: 'JOB_NOT_FOUND',
  SPAWN_FAILED: 'SPAWN_FAILED',
  INTERNAL: 'INTERNAL',
} as const;

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
