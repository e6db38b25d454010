/**
 * The host's public records: its backends' capabilities, system.info and the
 * retained host status, and whose broker it is. Part of the records of
 * records.ts (which re-exports these), apart to keep each file readable.
 */
import * as z from 'zod';
import { CHANNELS } from './agent.js';
import { BrokerFigures, HostFigures } from './metrics.js';
import { JOB_STATES, VM_STATES } from './states.js';
import { NAME_RE } from './topics.js';

const count = z.number().int().nonnegative();
const time = z.iso.datetime();

/** The state enums as schemas (the lists and their subsets are in states.ts). */
export const VmStateSchema = z.enum(VM_STATES);
export const JobStateSchema = z.enum(JOB_STATES);

/** One backend's capability map (host/hypervisors/types.ts HypervisorCapabilities). */
export const BackendCapabilities = z.strictObject({
  channels: z.array(z.enum(CHANNELS)).describe('agent channels it provides, best first'),
  pause: z.boolean(),
  reboot: z.boolean(),
  gracefulShutdown: z.boolean().describe('can ask the guest OS to power off'),
  console: z.boolean().describe('serial console'),
  directKernelBoot: z.boolean(),
  kernelFormats: z
    .array(z.enum(['bzImage', 'elf']))
    .describe(
      'kernel files it boots: the image bzImage, or an ELF vmlinux with a PVH entry derived from it',
    ),
  hotplugDisks: z.boolean().describe('disks added to and removed from a running VM'),
  liveDiskSnapshots: z.boolean().describe("snapshots of a running VM's qcow2 disk"),
  snapshots: z.boolean().describe('memory and device state saved and resumed (vm.suspend)'),
  forks: z
    .boolean()
    .describe('a saved state resumes as another VM (vm.snapshot, forks, template pools)'),
  accel: z.array(z.string()).describe('accelerators it can use, best first (kvm, tcg)'),
});
export type BackendCapabilities = z.infer<typeof BackendCapabilities>;

export const SystemInfo = z.strictObject({
  hostId: z.string(),
  version: z.string(),
  cpus: count,
  memoryMiB: count,
  allocated: z
    .strictObject({ vcpus: count, memoryMiB: count })
    .describe('held by VMs that are not stopped or failed'),
  limits: z.strictObject({ vcpus: count, memoryMiB: count, maxVms: count }),
  backends: z.array(
    z.strictObject({
      name: z.string(),
      available: z.boolean(),
      accel: z.string().nullable(),
      reason: z.string().describe('why the backend is unavailable').optional(),
      version: z.string().describe("the hypervisor program's version, when known").optional(),
      capabilities: BackendCapabilities.describe(
        'what VMs on this backend can do; an operation it lacks gets CAPABILITY_UNSUPPORTED',
      ),
      confinement: z
        .strictObject({
          user: z.boolean().describe('each hypervisor process runs as its own unprivileged user'),
          cgroup: z
            .enum(['v2', 'v1'])
            .nullable()
            .describe('the cgroup hierarchy limiting its cpu, memory and pids; null: none'),
          seccomp: z.boolean(),
          jail: z
            .boolean()
            .describe(
              "chroot plus new pid and mount namespaces (Firecracker's jailer); absent where the backend has no such launcher",
            )
            .optional(),
          reasons: z.array(z.string()).describe('why a part is off; empty when fully confined'),
        })
        .describe('how the hypervisor processes are confined here')
        .optional(),
    }),
  ),
  vms: z.partialRecord(VmStateSchema, count).describe('count of VMs by state'),
  images: z.array(z.string()),
  labels: z
    .record(z.string(), z.string())
    .describe("the host's labels (mvirtd --label K=V), for placing jobs across a fleet")
    .optional(),
  storage: z
    .strictObject({
      provisionedBytes: count.describe(
        "sum of the volumes' virtual sizes (what --storage-max-gib bounds)",
      ),
      usedBytes: count.describe('space the volume files take on the host'),
      freeBytes: count.describe(
        "free space of the volumes folder's file system (statfs, for mvirtd)",
      ),
      maxBytes: count.nullable().describe('--storage-max-gib in bytes; null: no cap'),
    })
    .describe('volume storage')
    .optional(),
  uplink: z
    .strictObject({
      broker: z.string().describe('the external broker, `host:port` (mvirtd --uplink)'),
      connected: z.boolean(),
      since: time
        .nullable()
        .describe('when the link last came up (connected) or went down (not connected)'),
      connects: count.describe('successful connections since mvirtd started'),
      lastError: z.string().nullable().describe('why the last attempt or link failed'),
      refused: count.describe(
        "publishes and subscriptions the broker refused (its ACL: check this host's broker user)",
      ),
      queued: count.describe('messages waiting for the link (bounded by --uplink-buffer)'),
      dropped: count.describe(
        'messages not delivered to the uplink because the buffer was full (oldest first)',
      ),
      retainedTopics: count.describe('retained topics republished after each reconnect'),
    })
    .describe('the link to an external broker, when mvirtd runs with --uplink')
    .optional(),
});
export type SystemInfo = z.infer<typeof SystemInfo>;

/**
 * The retained `<root>/status`. Everything but `hostId`, `online` and `at`
 * is absent in the last will (`online:false`).
 */
export const HostStatus = SystemInfo.partial()
  .extend({
    hostId: z.string(),
    online: z.boolean(),
    at: time,
    figures: HostFigures.optional(),
    broker: BrokerFigures.optional(),
    jobs: z
      .partialRecord(JobStateSchema, count)
      .describe('jobs by state (terminal states count what the store still holds)')
      .optional(),
  })
  .describe(
    'online:false (with hostId and at only) is the daemon last will; while online, the system.info fields, the host figures, broker counters and jobs by state',
  );
export type HostStatus = z.infer<typeof HostStatus>;

/** `<prefix>/_broker` (topics.ts brokerTopic): the host whose embedded broker this is. */
export const BrokerOwner = z
  .strictObject({ hostId: z.string().regex(NAME_RE) })
  .describe(
    "retained by mvirtd's embedded broker: the host it belongs to, the only one publishing on it",
  );
export type BrokerOwner = z.infer<typeof BrokerOwner>;
