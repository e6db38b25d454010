/**
 * The public RPC API (docs/protocol.md): request envelope, one params schema
 * per method and the schema of its result (the records are in records.ts; the
 * fs.*, image.* and port.* methods' own in fs.ts, image.ts and ports.ts). The
 * host's route table and the typed client are both keyed by `RpcMethods`, so
 * a method added here is checked on both ends.
 */
import * as z from 'zod';
import { utf8Length } from './text.js';
import { Name, VmRef } from './names.js';
import { JobArgv, JobEnv, JobLimits, JobTimeoutMs, SIGNALS } from './agent.js';
import { TtyCols, TtyRows } from './tty.js';
import { MetricsResult } from './metrics.js';
import { IMAGE_PARAMS, IMAGE_RESULTS } from './image.js';
import { PORT_PARAMS, PORT_RESULTS } from './ports.js';
import { DRY_RUN } from './plan.js';
import { FS_PARAMS, FS_RESULTS } from './fs.js';
import {
  EVENT_LEVELS,
  Empty,
  ErrorBodySchema,
  EventRecord,
  JobLogs,
  JobRecord,
  JobRunResult,
  NetworkSpec,
  PoolRecord,
  SnapshotRecord,
  SystemInfo,
  VmBlockDevices,
  VmRecord,
  VolumeRecord,
  VolumeSnapshot,
} from './records.js';
import { JOB_STATES, VM_KINDS, VM_STATES, VOLUME_FORMATS } from './states.js';
import { JOB_ID_RE, JOB_STDIN_BYTES, JOB_STDIN_CHUNK_BYTES, MAX_FORKS } from './limits.js';

export { JOB_ID_RE, JOB_STDIN_BYTES, JOB_STDIN_CHUNK_BYTES, MAX_FORKS };
export * from './states.js';
export * from './records.js';
export * from './plan.js';
export { ImageDetails, ImageRecord } from './image.js';
export { Name, VmRef };

/** A volume reference: its id (vol-<hex>) or its name. Never a path. */
export const VolumeRef = Name;

/**
 * A disk snapshot's name: a Name (no '/', '..', NUL or control characters, at
 * most 64) that is not all digits, since qemu-img takes a snapshot argument of
 * digits for a snapshot id as readily as for a name.
 */
export const SnapshotName = Name.refine((s) => !/^[0-9]+$/.test(s), 'must not be all digits');

/** Volume sizes in MiB: at least 1 MiB, at most 64 TiB. */
export const VolumeSizeMiB = z
  .number()
  .int()
  .min(1)
  .max(64 * 1024 * 1024);

/** Template snapshots (mvirtd's own, one per image build and VM size) are named so. */
export const TEMPLATE_SNAPSHOT_PREFIX = 'mvirt-template-';

/** vm.create's disks: at most 16, each a volume at most once. */
export const MAX_VM_DISKS = 16;
const VmDisks = z
  .array(z.strictObject({ volume: VolumeRef, readOnly: z.boolean().optional() }))
  .max(MAX_VM_DISKS)
  .refine((d) => new Set(d.map((x) => x.volume)).size === d.length, 'each volume at most once');

export const JobId = z.string().regex(JOB_ID_RE, 'a job id as returned by job.run (job-<hex>)');

/** The most chunk data one job.logs reply carries (page with nextSeq). */
export const JOB_LOGS_PAGE_BYTES = 4 * 1024 * 1024;
/** job.run {wait}: stdout and stderr are each cut to this many bytes (`truncated` says so). */
export const JOB_WAIT_OUTPUT_BYTES = 1024 * 1024;

export const RequestEnvelope = z.strictObject({
  id: z
    .string()
    .max(256)
    .describe('any string chosen by the caller, echoed in the reply')
    .optional(),
  replyTo: z.string().min(1).max(512).describe('reply topic; omit for fire-and-forget').optional(),
  params: z.unknown().optional(),
});
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

const Metadata = z
  .record(z.string().max(128), z.string().max(4096))
  .refine((m) => Object.keys(m).length <= 64, 'at most 64 metadata keys');

/** A cloud-init document (YAML text, or a `#!` script for user-data), as written to the seed. */
export const CLOUD_INIT_BYTES = 64 * 1024;
const CloudInitText = z
  .string()
  .refine((t) => utf8Length(t) <= CLOUD_INIT_BYTES, `at most ${CLOUD_INIT_BYTES} bytes of UTF-8`);

/** VM sizes: the same bounds for vm.create, job.run (ephemeral VMs) and pool.set. */
const Vcpus = z.number().int().min(1).max(64);
const MemoryMiB = z
  .number()
  .int()
  .min(64)
  .max(1024 * 1024);

export const PARAMS = {
  'system.info': z.strictObject({}).optional(),
  'vm.create': z
    .strictObject({
      ...DRY_RUN,
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
      /** Volumes attached as virtio-blk at every boot, in order. */
      disks: VmDisks.optional(),
      /**
       * Resume from this snapshot (id or name) instead of booting: size, image,
       * backend and network are the snapshot's. The VMs start at once.
       */
      fromSnapshot: Name.optional(),
      /** With fromSnapshot: this many forks, named `<name>-1` … `<name>-<count>`. */
      count: z.number().int().min(1).max(MAX_FORKS).optional(),
      /** With fromSnapshot: answer once every fork is ready. */
      wait: z.boolean().optional(),
    })
    .refine(
      (p) =>
        p.fromSnapshot === undefined ||
        [
          p.image,
          p.vcpus,
          p.memoryMiB,
          p.backend,
          p.network,
          p.disks,
          p.userData,
          p.metaData,
          p.networkConfig,
        ].every((x) => x === undefined),
      'a VM from a snapshot takes image, size, backend, network, disks and cloud-init from the snapshot',
    )
    .refine(
      (p) => p.fromSnapshot !== undefined || (p.count === undefined && p.wait === undefined),
      'count and wait go with fromSnapshot',
    ),
  'vm.get': z.strictObject({ vm: VmRef }),
  'vm.list': z.strictObject({ state: z.enum(VM_STATES).optional() }).optional(),
  'vm.start': z.strictObject({ ...DRY_RUN, vm: VmRef, wait: z.boolean().optional() }),
  'vm.stop': z.strictObject({
    ...DRY_RUN,
    vm: VmRef,
    timeoutMs: z.number().int().min(0).max(3600_000).optional(),
  }),
  'vm.kill': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  'vm.pause': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  'vm.resume': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  'vm.reboot': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  'vm.delete': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  /** Hot-plug on a running VM; on a stopped one, recorded for the next boot. */
  'vm.attachDisk': z.strictObject({
    ...DRY_RUN,
    vm: VmRef,
    volume: VolumeRef,
    readOnly: z.boolean().optional(),
  }),
  /** Asks the guest's agent (the VM must be up with its agent connected). */
  'vm.blockDevices': z.strictObject({ vm: VmRef }),
  /** Save the VM's memory and device state (it pauses for as long as that takes). */
  'vm.snapshot': z.strictObject({
    ...DRY_RUN,
    vm: VmRef,
    name: Name.refine(
      (n) => !n.startsWith(TEMPLATE_SNAPSHOT_PREFIX),
      `names starting ${TEMPLATE_SNAPSHOT_PREFIX} are mvirtd's template snapshots`,
    ),
  }),
  /** Save the VM's state and end its hypervisor process; vm.start resumes it. */
  'vm.suspend': z.strictObject({ ...DRY_RUN, vm: VmRef }),
  'snapshot.get': z.strictObject({ snapshot: Name }),
  'snapshot.list': z.strictObject({ vm: VmRef.optional() }).optional(),
  'snapshot.delete': z.strictObject({ ...DRY_RUN, snapshot: Name }),
  'vm.detachDisk': z.strictObject({
    ...DRY_RUN,
    vm: VmRef,
    volume: VolumeRef,
    /** How long to wait for the guest to release the disk (default 30 s); then DISK_BUSY. */
    timeoutMs: z.number().int().min(0).max(600_000).optional(),
  }),
  'job.run': z
    .strictObject({
      ...DRY_RUN,
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
          (t) => utf8Length(t) <= JOB_STDIN_BYTES,
          `at most ${JOB_STDIN_BYTES} bytes of UTF-8 (larger input: fetch it inside the job, or put it in the image)`,
        )
        .optional(),
      /**
       * `bytes`: the job's output is passed on as it is, base64 in JSON (each
       * chunk says `encoding: 'base64'`); default `text`, decoded as UTF-8.
       */
      encoding: z.enum(['text', 'bytes']).optional(),
      /** Keep the job's stdin open after `stdin` for job.stdin calls (until one says eof). */
      stdinOpen: z.boolean().optional(),
      timeoutMs: JobTimeoutMs.optional(),
      /** The job's own memory and CPU limits inside its VM (at most the VM's size). */
      limits: JobLimits.optional(),
      /** vCPUs and memory of an ephemeral VM (image target or none). */
      vcpus: Vcpus.optional(),
      memoryMiB: MemoryMiB.optional(),
      wait: z.boolean().optional(),
      /**
       * Run under a pseudo-terminal in the guest (its stdout and stderr
       * merged, as on a terminal), of `cols` × `rows` (default 80 × 24);
       * job.resize changes it while the job runs.
       */
      tty: z.boolean().optional(),
      cols: TtyCols.optional(),
      rows: TtyRows.optional(),
    })
    .refine(
      (p) => [p.vm, p.image, p.pool].filter((t) => t !== undefined).length <= 1,
      'give at most one of vm, image and pool',
    )
    .refine(
      (p) => p.tty === true || (p.cols === undefined && p.rows === undefined),
      'cols and rows size the terminal of a job run with tty: true',
    ),
  'job.get': z.strictObject({ jobId: JobId }),
  'job.list': z
    .strictObject({
      vm: VmRef.optional(),
      state: z.enum(JOB_STATES).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .optional(),
  'job.cancel': z.strictObject({ ...DRY_RUN, jobId: JobId }),
  'job.signal': z.strictObject({ ...DRY_RUN, jobId: JobId, signal: z.enum(SIGNALS) }),
  'job.stdin': z.strictObject({
    ...DRY_RUN,
    jobId: JobId,
    /** Bytes for the job's stdin, base64 (binary-safe in JSON and CBOR alike). */
    data: z
      .string()
      .max(Math.ceil(JOB_STDIN_CHUNK_BYTES / 3) * 4)
      .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64 (RFC 4648, with padding)')
      .refine((t) => t.length % 4 === 0, 'base64 (RFC 4648, with padding)'),
    /** Close the job's stdin after these bytes. */
    eof: z.boolean().optional(),
  }),
  /** A tty job's window changed size (the job's foreground processes get SIGWINCH). */
  'job.resize': z.strictObject({ ...DRY_RUN, jobId: JobId, cols: TtyCols, rows: TtyRows }),
  'job.logs': z.strictObject({
    jobId: JobId,
    fromSeq: z.number().int().nonnegative().optional(),
    /** Reply size cap in bytes of chunk data (default and maximum: JOB_LOGS_PAGE_BYTES). */
    maxBytes: z.number().int().min(1).max(JOB_LOGS_PAGE_BYTES).optional(),
  }),
  'pool.set': z
    .strictObject({
      ...DRY_RUN,
      name: Name,
      image: Name.optional(),
      min: z.number().int().min(0).max(256),
      max: z.number().int().min(1).max(256).optional(),
      vcpus: Vcpus.optional(),
      memoryMiB: MemoryMiB.optional(),
      /**
       * Members are forks of mvirtd's template snapshot of the pool's image
       * and size (taken once of a freshly booted, ready member; again after
       * the image is rebuilt); false: members boot. Omitted: as before (new pool: false).
       */
      snapshot: z.boolean().optional(),
      /** Members are forks of this VM snapshot (id or name); its image and size are the pool's. */
      fromSnapshot: Name.optional(),
    })
    .refine((p) => p.max === undefined || p.max >= p.min, 'max must be at least min')
    .refine(
      (p) => p.fromSnapshot === undefined || p.snapshot === undefined,
      'give snapshot or fromSnapshot, not both: fromSnapshot forks that snapshot, snapshot: true the template of the image',
    )
    .refine(
      (p) =>
        p.fromSnapshot === undefined ||
        [p.image, p.vcpus, p.memoryMiB].every((x) => x === undefined),
      'a pool from a snapshot takes its image and size from the snapshot: leave out image, vcpus and memoryMiB',
    ),
  'pool.get': z.strictObject({ name: Name }),
  'pool.list': z.strictObject({}).optional(),
  'pool.delete': z.strictObject({ ...DRY_RUN, name: Name }),
  ...IMAGE_PARAMS,
  'volume.create': z
    .strictObject({
      ...DRY_RUN,
      name: Name,
      format: z.enum(VOLUME_FORMATS).optional(),
      /** Required unless importing. */
      sizeMiB: VolumeSizeMiB.optional(),
      /** A file name inside the host's --volume-import-dir (not a path): copied in, converted to format. */
      importFrom: Name.optional(),
    })
    .refine(
      (p) => (p.sizeMiB === undefined) !== (p.importFrom === undefined),
      'give exactly one of sizeMiB and importFrom',
    ),
  'volume.get': z.strictObject({ volume: VolumeRef }),
  'volume.list': z.strictObject({}).optional(),
  'volume.resize': z.strictObject({ ...DRY_RUN, volume: VolumeRef, sizeMiB: VolumeSizeMiB }),
  'volume.delete': z.strictObject({ ...DRY_RUN, volume: VolumeRef }),
  'volume.clone': z.strictObject({
    ...DRY_RUN,
    volume: VolumeRef,
    name: Name,
    /** overlay (default): a qcow2 copy-on-write over the template; full: an independent copy. */
    mode: z.enum(['overlay', 'full']).optional(),
  }),
  /** qcow2 internal snapshots (live through the hypervisor while a running VM has the volume). */
  'volume.snapshot': z.strictObject({ ...DRY_RUN, volume: VolumeRef, name: SnapshotName }),
  'volume.snapshots': z.strictObject({ volume: VolumeRef }),
  'volume.restore': z.strictObject({ ...DRY_RUN, volume: VolumeRef, snapshot: SnapshotName }),
  'volume.deleteSnapshot': z.strictObject({
    ...DRY_RUN,
    volume: VolumeRef,
    snapshot: SnapshotName,
  }),
  'events.query': z
    .strictObject({
      objectId: z.string().min(1).max(128).optional(),
      level: z.enum(EVENT_LEVELS).optional(),
      /** Exact actor: `user:<name>`, `unix:<name>`, `anonymous`, `uplink:<client id>`, `vm:<id>`, `mvirtd`. */
      actor: z.string().min(1).max(200).optional(),
      since: z.union([z.number(), z.string().datetime()]).optional(),
      until: z.union([z.number(), z.string().datetime()]).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .optional(),
  ...PORT_PARAMS,
  'metrics.query': z.strictObject({
    /** A VM's id or name; without it, the host's own series. */
    vm: VmRef.optional(),
    from: z.union([z.number(), z.string().datetime()]),
    /** Default: now. */
    to: z.union([z.number(), z.string().datetime()]).optional(),
    /** Seconds per point, a multiple of 10; default: the stored resolution that covers `from`. */
    step: z.number().int().min(10).max(86_400).multipleOf(10).optional(),
  }),
  ...FS_PARAMS,
} as const;

export type RpcMethod = keyof typeof PARAMS;
export const RPC_METHODS = Object.keys(PARAMS) as RpcMethod[];
export type ParamsOf<M extends RpcMethod> = z.input<(typeof PARAMS)[M]>;

// ---------------------------------------------------------------- results

/** The record each method replies with (protocol/records.ts): a client validates a reply by method. */
export const RESULTS = {
  'system.info': SystemInfo,
  'vm.create': VmRecord.extend({
    forks: z
      .array(VmRecord)
      .describe('fromSnapshot with count > 1: the VMs after the first')
      .optional(),
  }),
  'vm.get': VmRecord,
  'vm.list': z.strictObject({ vms: z.array(VmRecord) }),
  'vm.start': VmRecord,
  'vm.stop': VmRecord,
  'vm.kill': VmRecord,
  'vm.pause': VmRecord,
  'vm.resume': VmRecord,
  'vm.reboot': VmRecord,
  'vm.delete': Empty,
  'vm.attachDisk': VmRecord,
  'vm.detachDisk': VmRecord,
  'vm.blockDevices': VmBlockDevices,
  'vm.snapshot': SnapshotRecord,
  'vm.suspend': VmRecord,
  'snapshot.get': SnapshotRecord,
  'snapshot.list': z.strictObject({ snapshots: z.array(SnapshotRecord) }),
  'snapshot.delete': Empty,
  'job.run': JobRunResult,
  'job.get': JobRecord,
  'job.list': z.strictObject({ jobs: z.array(JobRecord) }),
  'job.cancel': JobRecord,
  'job.signal': z.strictObject({
    delivered: z
      .boolean()
      .describe("the signal reached the job's process group (false: it had just exited)"),
  }),
  'job.stdin': z.strictObject({
    open: z
      .boolean()
      .describe("the job's stdin takes more (false: it was closed, or the job has exited)"),
  }),
  'job.resize': z.strictObject({
    delivered: z
      .boolean()
      .describe("the job's terminal was told the size (false: the job had just exited)"),
  }),
  'job.logs': JobLogs,
  'pool.set': PoolRecord,
  'pool.get': PoolRecord,
  'pool.list': z.strictObject({ pools: z.array(PoolRecord) }),
  'pool.delete': Empty,
  ...IMAGE_RESULTS,
  'volume.create': VolumeRecord,
  'volume.get': VolumeRecord,
  'volume.list': z.strictObject({ volumes: z.array(VolumeRecord) }),
  'volume.resize': VolumeRecord,
  'volume.delete': Empty,
  'volume.clone': VolumeRecord,
  'volume.snapshot': VolumeSnapshot,
  'volume.snapshots': z.strictObject({ snapshots: z.array(VolumeSnapshot) }),
  'volume.restore': VolumeRecord,
  'volume.deleteSnapshot': Empty,
  'events.query': z.strictObject({ events: z.array(EventRecord) }),
  ...PORT_RESULTS,
  'metrics.query': MetricsResult,
  ...FS_RESULTS,
} as const satisfies Record<RpcMethod, z.ZodType>;

/** One method's request: the envelope with its params (the server checks the two in turn). */
export const requestOf = (m: RpcMethod) => RequestEnvelope.extend({ params: PARAMS[m] });

/** One method's reply on the request's replyTo: its result, or an error. */
export const replyOf = (m: RpcMethod) =>
  z.discriminatedUnion('ok', [
    z.strictObject({ id: z.string().optional(), ok: z.literal(true), result: RESULTS[m] }),
    z.strictObject({ id: z.string().optional(), ok: z.literal(false), error: ErrorBodySchema }),
  ]);

export type RpcResults = { [M in RpcMethod]: z.infer<(typeof RESULTS)[M]> };
export type ResultOf<M extends RpcMethod> = RpcResults[M];

export type ReplyEnvelope<R = unknown> =
  | { id?: string; ok: true; result: R }
  | { id?: string; ok: false; error: { code: string; message: string; details?: unknown } };
