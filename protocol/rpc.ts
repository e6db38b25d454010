/**
 * The public RPC API (PROTOCOL.md): request envelope, one params schema per
 * method, the records it returns. The host's route table and the typed client
 * are both keyed by `RpcMethods`, so a method added here is checked on both ends.
 */
import { z } from 'zod';
import { NAME_RE } from './topics.js';
import type { BootTimeline } from './agent.js';

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

export const RequestEnvelope = z.strictObject({
  id: z.string().max(256).optional(),
  replyTo: z.string().min(1).max(512).optional(),
  params: z.unknown().optional(),
});
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

export const NetworkSpec = z.strictObject({
  mode: z.enum(['none', 'user', 'bridge']),
});
export type NetworkSpec = z.infer<typeof NetworkSpec>;

const Metadata = z
  .record(z.string().max(128), z.string().max(4096))
  .refine((m) => Object.keys(m).length <= 64, 'at most 64 metadata keys');

export const PARAMS = {
  'system.info': z.strictObject({}).optional(),
  'vm.create': z.strictObject({
    name: Name,
    image: Name.optional(),
    vcpus: z.number().int().min(1).max(64).optional(),
    memoryMiB: z
      .number()
      .int()
      .min(64)
      .max(1024 * 1024)
      .optional(),
    kind: z.enum(VM_KINDS).optional(),
    backend: Name.optional(),
    network: NetworkSpec.optional(),
    metadata: Metadata.optional(),
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
  'job.run': z.strictObject({
    argv: z.array(z.string().max(65536)).min(1).max(4096),
    vm: VmRef.optional(),
    image: Name.optional(),
    pool: Name.optional(),
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string().max(65536)).optional(),
    cwd: z.string().max(4096).optional(),
    stdin: z
      .string()
      .max(16 * 1024 * 1024)
      .optional(),
    timeoutMs: z.number().int().positive().optional(),
    wait: z.boolean().optional(),
  }),
  'job.get': z.strictObject({ jobId: z.string().min(1).max(128) }),
  'job.list': z
    .strictObject({ vm: VmRef.optional(), state: z.enum(JOB_STATES).optional() })
    .optional(),
  'job.cancel': z.strictObject({ jobId: z.string().min(1).max(128) }),
  'job.logs': z.strictObject({
    jobId: z.string().min(1).max(128),
    fromSeq: z.number().int().nonnegative().optional(),
  }),
  'events.query': z
    .strictObject({
      objectId: z.string().min(1).max(128).optional(),
      level: z.enum(['debug', 'info', 'warn', 'error', 'audit']).optional(),
      since: z.union([z.number(), z.string().datetime()]).optional(),
      until: z.union([z.number(), z.string().datetime()]).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .optional(),
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
  ip?: string;
  mac?: string;
  boot?: BootTimeline & { readyAtMs?: number };
  agentVersion?: string;
}

export interface JobRecord {
  jobId: string;
  vm: string | null;
  argv: string[];
  state: JobState;
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  reason?: string;
  queuePosition?: number;
}

export interface EventRecord {
  id: number;
  at: string;
  level: 'debug' | 'info' | 'warn' | 'error' | 'audit';
  component: string;
  message: string;
  objects: string[];
  data?: unknown;
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
  'job.run': JobRecord & { stdout?: string; stderr?: string };
  'job.get': JobRecord;
  'job.list': { jobs: JobRecord[] };
  'job.cancel': JobRecord;
  'job.logs': { chunks: OutputChunk[] };
  'events.query': { events: EventRecord[] };
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

/** Retained host status on `<root>/status`. */
export type HostStatus = { hostId: string; online: boolean; at: string } & Partial<SystemInfo>;
