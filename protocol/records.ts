/**
 * The public records: what replies carry and what the daemon publishes on the
 * public topics (PROTOCOL.md). One zod schema each, the TypeScript types are
 * inferred from them, docs/asyncapi.yaml is generated from them
 * (host/cli/docs/), and the client validates what it receives with them.
 * Unknown fields are rejected, as everywhere on the wire: a daemon that sends
 * a field the contract lacks fails a test instead of drifting silently.
 */
import * as z from 'zod';
import { JobStateSchema, VmStateSchema } from './host-records.js';
import { BlockDevicesResult, BootTimeline, JobLimits, JobUsage } from './agent.js';
import { TtySize } from './tty.js';
import { ERROR_CODES, type ErrorCode } from './errors.js';
import {
  NETWORK_MODES,
  SNAPSHOT_STATES,
  VM_KINDS,
  VOLUME_FORMATS,
  VOLUME_STATES,
} from './states.js';

const count = z.number().int().nonnegative();
const time = z.iso.datetime();

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
    agentOverNetwork: z
      .boolean()
      .describe("bridge only: the agent dials the broker's guest listener with a per-boot token")
      .optional(),
  })
  .refine(
    (n) => !n.agentOverNetwork || n.mode === 'bridge',
    'agentOverNetwork needs mode bridge (the guest listener is on the bridge address)',
  );
export type NetworkSpec = z.infer<typeof NetworkSpec>;

// ---------------------------------------------------------------- VM

/** What the agent of a restored VM did and how long the restore took (vm.create {fromSnapshot}, resume). */
export const RestoreInfo = z.strictObject({
  snapshot: z.string().describe('the snapshot id, or `suspend` for a resume of a suspended VM'),
  generation: z.number().int().nonnegative().describe('identity generation of this restore'),
  spawnToRunningMs: z.number().nonnegative().describe('hypervisor spawn → guest running'),
  readyAtMs: z.number().nonnegative().describe('hypervisor spawn → agent ready').optional(),
  clockStepMs: z
    .number()
    .describe('how far the agent stepped the guest clock (host minus guest before, ms)')
    .optional(),
  clockErrorMs: z
    .number()
    .describe('guest minus host after the step, as mvirtd read it with pings (ms)')
    .optional(),
  clockErrorBoundMs: z
    .number()
    .nonnegative()
    .describe('clockErrorMs is right to within ± this (half the best ping round trip, ms)')
    .optional(),
  entropyBytes: z.number().int().nonnegative().describe('host entropy mixed in').optional(),
  previousVm: z.string().describe('the VM id the guest was before (a fork: the source)').optional(),
  network: z
    .enum(['applied', 'none', 'failed', 'pending'])
    .describe("the NIC took the fork's MAC and address (bridged); its link is up only once applied")
    .optional(),
  jobsDropped: z.number().int().nonnegative().optional(),
});
export type RestoreInfo = z.infer<typeof RestoreInfo>;

export const VmRecord = z.strictObject({
  id: z.string(),
  name: z.string(),
  state: VmStateSchema,
  vcpus: count,
  memoryMiB: count,
  kind: z.enum(VM_KINDS),
  image: z.string(),
  backend: z.string(),
  network: NetworkSpec,
  metadata: z.record(z.string(), z.string()),
  createdAt: time,
  updatedAt: time,
  stateReason: z
    .string()
    .describe('why the VM is in its state (failed, stopped by recovery, …)')
    .optional(),
  startedAt: time.optional(),
  accel: z.string().describe('kvm or tcg').optional(),
  pid: z.number().int().describe('the hypervisor process').optional(),
  ip: z.string().describe('bridge mode: the allocated address, kept until delete').optional(),
  mac: z.string().describe('bridge mode: derived from the VM id').optional(),
  cloudInit: z
    .strictObject({ userData: z.boolean(), metaData: z.boolean(), networkConfig: z.boolean() })
    .describe("which cloud-init documents the VM's seed carries")
    .optional(),
  boot: BootTimeline.extend({
    readyAtMs: z
      .number()
      .nonnegative()
      .describe('ready, from hypervisor spawn (host clock)')
      .optional(),
  })
    .describe('guest uptime in seconds at each boot milestone')
    .optional(),
  agentVersion: z.string().optional(),
  disks: z
    .array(
      z.strictObject({
        volume: z.string().describe('the volume id'),
        readOnly: z.boolean(),
        serial: z
          .string()
          .describe('the virtio-blk serial the guest sees (/dev/disk/by-id/virtio-<serial>)'),
      }),
    )
    .describe(
      'volumes attached as virtio-blk at every boot, in this order, after the image root disk',
    )
    .optional(),
  restoredFrom: z
    .string()
    .describe('the snapshot this VM was made from (vm.create {fromSnapshot})')
    .optional(),
  restore: RestoreInfo.describe('the last restore: from a snapshot, or a resume').optional(),
});
export type VmRecord = z.infer<typeof VmRecord>;

/** vm.blockDevices: what the guest's agent lists in /sys/block now, with each mount's use. */
export const VmBlockDevices = z.strictObject({
  vm: z.string(),
  at: time,
  blockDevices: BlockDevicesResult.shape.blockDevices,
});
export type VmBlockDevices = z.infer<typeof VmBlockDevices>;

/** Public VM event payload on `vm/<id>/events`. */
export const VmEvent = z.strictObject({
  at: time,
  type: z.string().describe('state, created, deleted, agent.hello, …'),
  from: VmStateSchema.optional(),
  to: VmStateSchema.optional(),
  reason: z.string().optional(),
});
export type VmEvent = z.infer<typeof VmEvent>;

// ---------------------------------------------------------------- job

export const JobTarget = z
  .discriminatedUnion('kind', [
    z.strictObject({
      kind: z.literal('vm'),
      vm: z
        .string()
        .describe('the VM id (a name in the request is resolved to its id: names can be reused)'),
    }),
    z.strictObject({ kind: z.literal('image'), image: z.string() }),
    z.strictObject({ kind: z.literal('pool'), pool: z.string() }),
  ])
  .describe('where the job runs: a VM, an ephemeral VM of an image, or a VM of a pool');
export type JobTarget = z.infer<typeof JobTarget>;

const jobFields = {
  jobId: z.string().describe('job-<hex>'),
  vm: z.string().nullable().describe('the VM the job runs (or ran) in; null while queued for a VM'),
  target: JobTarget,
  argv: z.array(z.string()),
  cwd: z.string().optional(),
  timeoutMs: count.optional(),
  state: JobStateSchema,
  exitCode: z.number().int().nullable(),
  signal: z.string().nullable().describe('the signal that ended the process, e.g. SIGKILL'),
  oomKilled: z
    .boolean()
    .describe("the guest's OOM killer ended this job (counted in the job's own memory group)"),
  encoding: z
    .literal('bytes')
    .describe('job.run {encoding: bytes}: its output chunks carry base64 (absent: UTF-8 text)')
    .optional(),
  limits: JobLimits.describe(
    "job.run {limits}: the job's own cgroup limits in the guest",
  ).optional(),
  tty: TtySize.describe(
    'job.run {tty: true}: it runs under a pseudo-terminal, of this size at its start',
  ).optional(),
  usage: JobUsage.describe(
    'what the job used, read from its cgroup as it ended (absent: it did not run, or the guest has no cgroups)',
  ).optional(),
  createdAt: time,
  startedAt: time.nullable(),
  finishedAt: time.nullable(),
  reason: z
    .string()
    .describe('why the job ended as it did (lost, failed to start, cancelled, …)')
    .optional(),
  queuePosition: z
    .number()
    .int()
    .min(1)
    .describe('1-based place in the queue while queued waiting for capacity')
    .optional(),
  nextSeq: count.describe('the next output sequence number: chunks 0 … nextSeq-1 were produced'),
  outputBytes: count.describe('output produced so far, in bytes'),
  dropped: z
    .strictObject({ chunks: count, bytes: count })
    .describe('output dropped by the retention limit, oldest first'),
};

export const JobRecord = z.strictObject(jobFields);
export type JobRecord = z.infer<typeof JobRecord>;

/** job.run's reply: the job record, and with `wait` its collected output. */
export const JobRunResult = z.strictObject({
  ...jobFields,
  stdout: z
    .string()
    .describe(
      'with wait: the output, cut at JOB_WAIT_OUTPUT_BYTES (1 MiB) per stream; base64 for encoding: bytes',
    )
    .optional(),
  stderr: z.string().optional(),
  truncated: z.boolean().describe('with wait: stdout or stderr was cut').optional(),
});
export type JobRunResult = z.infer<typeof JobRunResult>;

export const OutputChunk = z.strictObject({
  seq: count,
  stream: z.enum(['stdout', 'stderr']),
  data: z.string(),
  /** `base64`: `data` is the bytes as they came, base64 (a job run with encoding: bytes). */
  encoding: z.literal('base64').optional(),
});
export type OutputChunk = z.infer<typeof OutputChunk>;

export const JobLogs = z.strictObject({
  chunks: z.array(OutputChunk),
  nextSeq: count.describe("ask again from here for more (the job's nextSeq once all is read)"),
  more: z.boolean().describe('more chunks are stored beyond this page'),
  firstSeq: count.describe('the oldest chunk still stored; earlier ones were dropped by retention'),
});
export type JobLogs = z.infer<typeof JobLogs>;

// ---------------------------------------------------------------- pool

export const PoolRecord = z.strictObject({
  name: z.string(),
  image: z.string(),
  min: count.describe('ready VMs the daemon keeps'),
  max: count.describe('most VMs the pool may hold'),
  vcpus: count,
  memoryMiB: count,
  snapshot: z
    .literal(true)
    .describe("members are forks of mvirtd's template snapshot of the image and size")
    .optional(),
  fromSnapshot: z
    .string()
    .describe('members are forks of this VM snapshot (its id); image and size are its')
    .optional(),
  createdAt: time,
  updatedAt: time,
  problem: z
    .string()
    .describe(
      'why the pool cannot make members now (its snapshot was deleted, the last boot failed); absent while all is well',
    )
    .optional(),
  vms: z
    .strictObject({ starting: count, ready: count, busy: count })
    .describe("the pool's VMs now: booting, idle and ready, running a job"),
});
export type PoolRecord = z.infer<typeof PoolRecord>;

// ---------------------------------------------------------------- volume

export const VolumeRecord = z.strictObject({
  id: z
    .string()
    .describe('vol-<hex>; also the file name under <data-dir>/volumes/ and the disk serial'),
  name: z.string(),
  state: z.enum(VOLUME_STATES),
  format: z.enum(VOLUME_FORMATS),
  sizeBytes: count.describe('virtual size: what the guest sees'),
  usedBytes: count.describe('space the file takes on the host now (qemu-img actual-size)'),
  backing: z
    .string()
    .nullable()
    .describe('qcow2 overlay clones: the template volume id its unwritten blocks come from'),
  attachedTo: z
    .array(z.strictObject({ vm: z.string().describe('VM id'), readOnly: z.boolean() }))
    .describe('the VMs listing this volume among their disks'),
  createdAt: time,
  updatedAt: time,
});
export type VolumeRecord = z.infer<typeof VolumeRecord>;

/** One qcow2 internal snapshot of a volume (volume.snapshots), as qemu-img lists it. */
export const VolumeSnapshot = z.strictObject({
  name: z.string(),
  id: z.string().describe("qemu's own snapshot id inside the qcow2 file"),
  vmStateBytes: count.describe('saved VM memory and device state; 0 for a disk-only snapshot'),
  createdAt: time,
});
export type VolumeSnapshot = z.infer<typeof VolumeSnapshot>;

/** How a snapshot keeps one of its source's volumes (SnapshotRecord.disks). */
export const SNAPSHOT_DISK_KEPT = ['copy', 'shared'] as const;

/** One volume disk of a snapshot's source VM, as it was when the snapshot was taken. */
export const SnapshotDisk = z.strictObject({
  volume: z.string().describe('the volume id then (it may be deleted since, unless `shared`)'),
  name: z.string().describe("the volume's name then"),
  format: z.enum(VOLUME_FORMATS),
  readOnly: z.boolean(),
  sizeBytes: count.describe('virtual size: what the guest saw'),
  kept: z
    .enum(SNAPSHOT_DISK_KEPT)
    .describe(
      "copy: its file was copied into the snapshot's folder while the VM was paused, and each fork gets a new volume copied from it; shared: attached read-only, so not copied: forks attach the volume itself read-only, and it cannot change while the snapshot exists",
    ),
  template: z
    .string()
    .describe(
      "a copied qcow2 overlay clone's template volume id: the copy reads through it, so it cannot change while the snapshot exists, and the forks' volumes are clones of it",
    )
    .optional(),
});
export type SnapshotDisk = z.infer<typeof SnapshotDisk>;

/** A VM's saved memory and device state (vm.snapshot), in <data-dir>/snapshots/<id>/. */
export const SnapshotRecord = z.strictObject({
  id: z.string().describe('snap-<hex>; also its folder under <data-dir>/snapshots/'),
  name: z.string(),
  state: z.enum(SNAPSHOT_STATES),
  source: z.strictObject({ vm: z.string(), name: z.string() }).describe('the VM it was taken of'),
  image: z.string(),
  backend: z.string(),
  vcpus: count,
  memoryMiB: count,
  network: NetworkSpec,
  hypervisor: z
    .strictObject({ version: z.string(), machine: z.string() })
    .describe('a snapshot resumes only on the same hypervisor build and machine type'),
  bytes: count.describe('size of the saved state'),
  disks: z
    .array(SnapshotDisk)
    .describe(
      "the source's volume disks, in order: a fork gets the same disks in the same order (its own copies, or the shared read-only volumes); absent: it had none",
    )
    .optional(),
  createdAt: time,
  createdBy: z.string().describe('who took it (`user:<name>`, …)').optional(),
});
export type SnapshotRecord = z.infer<typeof SnapshotRecord>;

// ---------------------------------------------------------------- events

export const EVENT_LEVELS = ['debug', 'info', 'warn', 'error', 'audit'] as const;

export const EventRecord = z.strictObject({
  id: count,
  at: time,
  level: z.enum(EVENT_LEVELS),
  component: z.string(),
  message: z.string(),
  objects: z
    .array(z.string())
    .describe('ids of every object the event touches (VM, job, image, host:<id>, …)'),
  data: z.unknown().optional(),
  actor: z
    .string()
    .optional()
    .describe(
      'who acted: `user:<name>`, `unix:<name>`, `anonymous`, `uplink:<client id>` (a request over mvirtd --uplink: the client id its reply topic names, see docs/security.md), `vm:<id>` or `mvirtd`',
    ),
  actorClient: z
    .string()
    .optional()
    .describe("the controller's client id, when a controller acted"),
});
export type EventRecord = z.infer<typeof EventRecord>;

export * from './host-records.js';

// ---------------------------------------------------------------- replies

/** The `error` of a failed reply (errors.ts ErrorBody). */
export const ErrorBodySchema = z.strictObject({
  code: z
    .enum(Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]])
    .describe('see docs/errors.md'),
  message: z.string(),
  details: z.unknown().optional(),
});

/** No fields: vm.delete, pool.delete. */
export const Empty = z.strictObject({});
export type Empty = z.infer<typeof Empty>;
