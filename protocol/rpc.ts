/**
 * The public RPC API (PROTOCOL.md): request envelope, one params schema per
 * method, the records it returns. The host's route table and the typed client
 * are both keyed by `RpcMethods`, so a method added here is checked on both ends.
 */
import { z } from 'zod';
import { NAME_RE } from './topics.js';
import { JobArgv, JobEnv, JobTimeoutMs, type BootTimeline } from './agent.js';
import type { MetricsResult } from './metrics.js';

export type { HostStatus } from './metrics.js';

export const VM_STATES = [
  'stopped',
  'starting',
  'ready',
  'busy',
  'running',
  'paused',
  'stopping',
  'failed',
] as const;
export type VmState = (typeof VM_STATES)[number];

export const JOB_STATES = [
  'queued',
  'running',
  'succeeded',
  'failed',
  'timed_out',
  'cancelled',
  'lost',
] as const;
export type JobState = (typeof JOB_STATES)[number];

export const VM_KINDS = ['service', 'ephemeral'] as const;
export type VmKind = (typeof VM_KINDS)[number];

export const Name = z
  .string()
  .regex(NAME_RE, "letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit")
  .refine((s) => !s.includes('..'), "must not contain '..'");

/** A VM reference: its id or its name. */
export const VmRef = Name;

export const JobId = z
  .string()
  .regex(/^job-[0-9a-f]{12,32}$/, 'a job id as returned by job.run (job-<hex>)');

/** The most chunk data one job.logs reply carries (page with nextSeq). */
export const JOB_LOGS_PAGE_BYTES = 4 * 1024 * 1024;
/** job.run's stdin, in bytes of UTF-8: a request must stay under the broker's packet limit. */
export const JOB_STDIN_BYTES = 512 * 1024;
/** job.run {wait}: stdout and stderr are each cut to this many bytes (`truncated` says so). */
export const JOB_WAIT_OUTPUT_BYTES = 1024 * 1024;

export const RequestEnvelope = z.strictObject({
  id: z.string().max(256).optional(),
  replyTo: z.string().min(1).max(512).optional(),
  params: z.unknown().optional(),
});
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

export const NETWORK_MODES = ['none', 'user', 'bridge'] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/**
 * A VM's network. `user`: QEMU user-mode networking (outbound only, no
 * privileges); `bridge`: a TAP on the host bridge with an address from the
 * host's subnet; `none`: no NIC. `agentOverNetwork` (bridge only): the agent
 * dials the broker's guest listener on the bridge address with a per-boot
 * token instead of using the hypervisor's channel.
 */
export const NetworkSpec = z
  .strictObject({
    mode: z.enum(NETWORK_MODES),
    agentOverNetwork: z.boolean().optional(),
  })
  .refine(
    (n) => !n.agentOverNetwork || n.mode === 'bridge',
    'agentOverNetwork needs mode bridge (the guest listener is on the bridge address)',
  );
export type NetworkSpec = z.infer<typeof NetworkSpec>;

const Metadata = z
  .record(z.string().max(128), z.string().max(4096))
  .refine((m) => Object.keys(m).length <= 64, 'at most 64 metadata keys');

/** A cloud-init document (YAML text, or a `#!` script for user-data), as written to the seed. */
export const CLOUD_INIT_BYTES = 64 * 1024;
const CloudInitText = z
  .string()
  .refine(
    (t) => Buffer.byteLength(t) <= CLOUD_INIT_BYTES,
    `at most ${CLOUD_INIT_BYTES} bytes of UTF-8`,
  );

/** VM sizes: the same bounds for vm.create, job.run (ephemeral VMs) and pool.set. */
const Vcpus = z.number().int().min(1).max(64);
const MemoryMiB = z
  .number()
  .int()
  .min(64)
  .max(1024 * 1024);

export const PARAMS = {
  'system.info': z.strictObject({}).optional(),
  'vm.create': z.strictObject({
    name: Name,
    image: Name.optional(),
    vcpus: Vcpus.optional(),
    memoryMiB: MemoryMiB.optional(),
    kind: z.enum(VM_KINDS).optional(),
    backend: Name.optional(),
    /** Default: the host's --network mode. */
    network: NetworkSpec.optional(),
    metadata: Metadata.optional(),
    /** cloud-init NoCloud seed (a `cidata` disk attached read-only). */
    userData: CloudInitText.optional(),
    metaData: CloudInitText.optional(),
    networkConfig: CloudInitText.optional(),
  }),
  'vm.get': z.strictObject({ vm: VmRef }),
  'vm.list': z.strictObject({ state: z.enum(VM_STATES).optional() }).optional(),
  'vm.start': z.strictObject({ vm: VmRef, wait: z.boolean().optional() }),
  'vm.stop': z.strictObject({
    vm: VmRef,
    timeoutMs: z.number().int().min(0).max(3600_000).optional(),
  }),
  'vm.kill': z.strictObject({ vm: VmRef }),
  'vm.pause': z.strictObject({ vm: VmRef }),
  'vm.resume': z.strictObject({ vm: VmRef }),
  'vm.reboot': z.strictObject({ vm: VmRef }),
  'vm.delete': z.strictObject({ vm: VmRef }),
  'job.run': z
    .strictObject({
      argv: JobArgv,
      /** A ready service VM (id or name). */
      vm: VmRef.optional(),
      /** An image for an ephemeral VM booted for this job. */
      image: Name.optional(),
      /** A pool: the job takes one of its ready VMs exclusively. */
      pool: Name.optional(),
      env: JobEnv.optional(),
      cwd: z.string().max(4096).optional(),
      stdin: z
        .string()
        .refine(
          (t) => Buffer.byteLength(t) <= JOB_STDIN_BYTES,
          `at most ${JOB_STDIN_BYTES} bytes of UTF-8 (larger input: copy a file into the VM)`,
        )
        .optional(),
      timeoutMs: JobTimeoutMs.optional(),
      /** vCPUs and memory of an ephemeral VM (image target or none). */
      vcpus: Vcpus.optional(),
      memoryMiB: MemoryMiB.optional(),
      wait: z.boolean().optional(),
    })
    .refine(
      (p) => [p.vm, p.image, p.pool].filter((t) => t !== undefined).length <= 1,
      'give at most one of vm, image and pool',
    ),
  'job.get': z.strictObject({ jobId: JobId }),
  'job.list': z
    .strictObject({
      vm: VmRef.optional(),
      state: z.enum(JOB_STATES).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .optional(),
  'job.cancel': z.strictObject({ jobId: JobId }),
  'job.logs': z.strictObject({
    jobId: JobId,
    fromSeq: z.number().int().nonnegative().optional(),
    /** Reply size cap in bytes of chunk data (default and maximum: JOB_LOGS_PAGE_BYTES). */
    maxBytes: z.number().int().min(1).max(JOB_LOGS_PAGE_BYTES).optional(),
  }),
  'pool.set': z
    .strictObject({
      name: Name,
      image: Name.optional(),
      min: z.number().int().min(0).max(256),
      max: z.number().int().min(1).max(256).optional(),
      vcpus: Vcpus.optional(),
      memoryMiB: MemoryMiB.optional(),
    })
    .refine((p) => p.max === undefined || p.max >= p.min, 'max must be at least min'),
  'pool.get': z.strictObject({ name: Name }),
  'pool.list': z.strictObject({}).optional(),
  'pool.delete': z.strictObject({ name: Name }),
  'events.query': z
    .strictObject({
      objectId: z.string().min(1).max(128).optional(),
      level: z.enum(['debug', 'info', 'warn', 'error', 'audit']).optional(),
      /** Exact actor: `user:<name>`, `unix:<name>`, `anonymous`, `vm:<id>`, `mvirtd`. */
      actor: z.string().min(1).max(200).optional(),
      since: z.union([z.number(), z.string().datetime()]).optional(),
      until: z.union([z.number(), z.string().datetime()]).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .optional(),
  'metrics.query': z.strictObject({
    /** A VM's id or name; without it, the host's own series. */
    vm: VmRef.optional(),
    from: z.union([z.number(), z.string().datetime()]),
    /** Default: now. */
    to: z.union([z.number(), z.string().datetime()]).optional(),
    /** Seconds per point, a multiple of 10; default: the stored resolution that covers `from`. */
    step: z.number().int().min(10).max(86_400).multipleOf(10).optional(),
  }),
} as const;

export type RpcMethod = keyof typeof PARAMS;
export const RPC_METHODS = Object.keys(PARAMS) as RpcMethod[];
export type ParamsOf<M extends RpcMethod> = z.input<(typeof PARAMS)[M]>;

// ---------------------------------------------------------------- records

export interface VmRecord {
  id: string;
  name: string;
  state: VmState;
  vcpus: number;
  memoryMiB: number;
  kind: VmKind;
  image: string;
  backend: string;
  network: NetworkSpec;
  metadata: Record<string, string>;
  createdAt: string;
  updatedAt: string;
  /** Why the VM is in its state (failed, stopped by recovery, …). */
  stateReason?: string;
  startedAt?: string;
  accel?: string;
  pid?: number;
  /** Bridge mode: the address allocated to the VM (kept until delete) and its MAC. */
  ip?: string;
  mac?: string;
  /** Which cloud-init documents the VM's seed carries. */
  cloudInit?: { userData: boolean; metaData: boolean; networkConfig: boolean };
  boot?: BootTimeline & { readyAtMs?: number };
  agentVersion?: string;
}

export type JobTarget =
  { kind: 'vm'; vm: string } | { kind: 'image'; image: string } | { kind: 'pool'; pool: string };

export interface JobRecord {
  jobId: string;
  /** The VM the job runs (or ran) in; null while queued for a VM. */
  vm: string | null;
  target: JobTarget;
  argv: string[];
  cwd?: string;
  timeoutMs?: number;
  state: JobState;
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** Why the job ended as it did (lost, failed to start, cancelled, …). */
  reason?: string;
  /** 1-based place in the queue while queued waiting for capacity. */
  queuePosition?: number;
  /** The next output sequence number (chunks 0 … nextSeq-1 were produced). */
  nextSeq: number;
  outputBytes: number;
  /** Output dropped by the retention limit (oldest first). */
  dropped: { chunks: number; bytes: number };
}

export interface PoolRecord {
  name: string;
  image: string;
  min: number;
  max: number;
  vcpus: number;
  memoryMiB: number;
  createdAt: string;
  updatedAt: string;
  /** The pool's VMs now: booting, idle and ready, running a job. */
  vms: { starting: number; ready: number; busy: number };
}

export interface EventRecord {
  id: number;
  at: string;
  level: 'debug' | 'info' | 'warn' | 'error' | 'audit';
  component: string;
  message: string;
  objects: string[];
  data?: unknown;
  /** Who acted: `user:<name>`, `unix:<name>`, `anonymous`, `vm:<id>` or `mvirtd`. */
  actor?: string;
  /** The controller's client id, when a controller acted. */
  actorClient?: string;
}

export interface SystemInfo {
  hostId: string;
  version: string;
  cpus: number;
  memoryMiB: number;
  allocated: { vcpus: number; memoryMiB: number };
  limits: { vcpus: number; memoryMiB: number; maxVms: number };
  backends: { name: string; available: boolean; accel: string | null; reason?: string }[];
  vms: Partial<Record<VmState, number>>;
  images: string[];
}

export interface OutputChunk {
  seq: number;
  stream: 'stdout' | 'stderr';
  data: string;
}

export interface JobLogs {
  chunks: OutputChunk[];
  /** Ask again from here for more (equal to the job's nextSeq when all is read). */
  nextSeq: number;
  /** More chunks are stored beyond this page. */
  more: boolean;
  /** The oldest chunk still stored (earlier ones were dropped by retention). */
  firstSeq: number;
}

export interface RpcResults {
  'system.info': SystemInfo;
  'vm.create': VmRecord;
  'vm.get': VmRecord;
  'vm.list': { vms: VmRecord[] };
  'vm.start': VmRecord;
  'vm.stop': VmRecord;
  'vm.kill': VmRecord;
  'vm.pause': VmRecord;
  'vm.resume': VmRecord;
  'vm.reboot': VmRecord;
  'vm.delete': Record<string, never>;
  'job.run': JobRecord & { stdout?: string; stderr?: string; truncated?: boolean };
  'job.get': JobRecord;
  'job.list': { jobs: JobRecord[] };
  'job.cancel': JobRecord;
  'job.logs': JobLogs;
  'pool.set': PoolRecord;
  'pool.get': PoolRecord;
  'pool.list': { pools: PoolRecord[] };
  'pool.delete': Record<string, never>;
  'events.query': { events: EventRecord[] };
  'metrics.query': MetricsResult;
}

export type ResultOf<M extends RpcMethod> = RpcResults[M];

export type ReplyEnvelope<R = unknown> =
  | { id?: string; ok: true; result: R }
  | { id?: string; ok: false; error: { code: string; message: string; details?: unknown } };

/** Public VM event payload on `vm/<id>/events`. */
export interface VmEvent {
  at: string;
  type: string;
  from?: VmState;
  to?: VmState;
  reason?: string;
}
