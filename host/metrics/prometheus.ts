/**
 * /metrics in the Prometheus text format (prom-client, its own registry: no
 * global state, so two daemons in one test process do not mix).
 *
 * Gauges read the daemon's current state on each scrape (collect callbacks),
 * so nothing is updated on the hot paths; histograms are fed by the VM and
 * job state hooks: boot stages from the agent's boot timeline when a VM
 * becomes ready, queue wait and run time when a job ends.
 */
import client from 'prom-client';
import { JOB_STATES, VM_STATES } from '../../protocol/rpc.js';
import type { JobRecord, JobState, VmRecord, VmState } from '../../protocol/rpc.js';
import type { HostFigures, VmTelemetry } from '../../protocol/metrics.js';
import type { BrokerStats } from '../broker/types.js';

const MiB = 1024 * 1024;

export interface PrometheusDeps {
  hostId: string;
  host: { cpus: number; memoryMiB: number };
  figures: () => HostFigures;
  vms: {
    list(): VmRecord[];
    countByState(): Partial<Record<VmState, number>>;
    allocated(): { vms: number; vcpus: number; memoryMiB: number };
  };
  telemetry: (vmId: string) => VmTelemetry | undefined;
  jobs: () => Partial<Record<JobState, number>>;
  broker: () => BrokerStats;
}

export interface Prometheus {
  readonly contentType: string;
  metrics(): Promise<string>;
  /** A VM reached ready from starting: record its boot stages. */
  observeBoot(rec: VmRecord): void;
  /** A job reached a final state: record its queue wait and run time. */
  observeJob(rec: JobRecord): void;
}

const BOOT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120];
const JOB_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];

const seconds = (from: string | null, to: string | null): number | null => {
  if (!from || !to) return null;
  const d = (Date.parse(to) - Date.parse(from)) / 1000;
  return Number.isFinite(d) && d >= 0 ? d : null;
};

export function createPrometheus(d: PrometheusDeps): Prometheus {
  const registry = new client.Registry();
  registry.setDefaultLabels({ host: d.hostId });
  // mvirtd's own process: CPU seconds, memory, event-loop lag, handles.
  client.collectDefaultMetrics({ register: registry });

  const gauge = (
    name: string,
    help: string,
    labelNames: string[],
    collect: (g: client.Gauge) => void,
  ): void => {
    new client.Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        collect(this);
      },
    });
  };

  // One snapshot per scrape (taken in metrics() before the collectors run), so
  // every series of a scrape describes the same moment and the VM list is
  // read once, not once per per-VM metric.
  let snap: { fig: HostFigures; vms: VmRecord[] } | null = null;
  const fig = (): HostFigures => (snap ??= { fig: d.figures(), vms: d.vms.list() }).fig;
  const vmList = (): VmRecord[] => (snap ??= { fig: d.figures(), vms: d.vms.list() }).vms;

  // ---------------------------------------------------------------- host
  gauge(
    'mvirt_host_cpu_percent',
    'Host CPU busy since the previous sample (100 = one CPU).',
    [],
    (g) => g.set(fig().cpuPercent),
  );
  gauge('mvirt_host_cpus', 'Host CPUs.', [], (g) => g.set(d.host.cpus));
  gauge('mvirt_host_memory_total_bytes', 'Host memory.', [], (g) => g.set(fig().memTotalMiB * MiB));
  gauge('mvirt_host_memory_used_bytes', 'Host memory in use (total − available).', [], (g) =>
    g.set(fig().memUsedMiB * MiB),
  );
  gauge('mvirt_host_load1', 'Host load average over 1 minute.', [], (g) => g.set(fig().load1));
  gauge('mvirt_allocated_vcpus', 'vCPUs held by VMs that are not stopped or failed.', [], (g) =>
    g.set(d.vms.allocated().vcpus),
  );
  gauge(
    'mvirt_allocated_memory_bytes',
    'Guest memory held by VMs that are not stopped or failed.',
    [],
    (g) => g.set(d.vms.allocated().memoryMiB * MiB),
  );
  gauge('mvirt_vms', 'VMs by state.', ['state'], (g) => {
    const c = d.vms.countByState();
    for (const s of VM_STATES) g.set({ state: s }, c[s] ?? 0);
  });
  gauge(
    'mvirt_jobs',
    'Jobs by state (finished ones while the store keeps them).',
    ['state'],
    (g) => {
      const c = d.jobs();
      for (const s of JOB_STATES) g.set({ state: s }, c[s] ?? 0);
    },
  );

  // ---------------------------------------------------------------- broker
  gauge('mvirt_broker_clients', 'Connected MQTT clients (controllers and agents).', [], (g) =>
    g.set(d.broker().clients),
  );
  const counter = (name: string, help: string, value: (s: BrokerStats) => number): void => {
    new client.Counter({
      name,
      help,
      registers: [registry],
      collect() {
        // The broker keeps the count; the metric mirrors it.
        this.reset();
        this.inc(value(d.broker()));
      },
    });
  };
  counter(
    'mvirt_broker_messages_received_total',
    'PUBLISH packets accepted (clients and daemon).',
    (s) => s.messagesIn,
  );
  counter(
    'mvirt_broker_messages_sent_total',
    'PUBLISH packets delivered to clients.',
    (s) => s.messagesOut,
  );

  // ---------------------------------------------------------------- per VM
  const vmLabels = ['id', 'name'];
  gauge(
    'mvirt_vm_info',
    'One per VM: its state, image and kind as labels.',
    [...vmLabels, 'state', 'image', 'kind'],
    (g) => {
      for (const v of vmList())
        g.set({ id: v.id, name: v.name, state: v.state, image: v.image, kind: v.kind }, 1);
    },
  );
  gauge('mvirt_vm_vcpus', 'vCPUs of the VM.', vmLabels, (g) => {
    for (const v of vmList()) g.set({ id: v.id, name: v.name }, v.vcpus);
  });
  gauge('mvirt_vm_memory_bytes', 'Memory given to the VM.', vmLabels, (g) => {
    for (const v of vmList()) g.set({ id: v.id, name: v.name }, v.memoryMiB * MiB);
  });
  const fromTelemetry = (name: string, help: string, value: (t: VmTelemetry) => number): void =>
    gauge(name, `${help} (agent telemetry; absent while the VM is not running)`, vmLabels, (g) => {
      for (const v of vmList()) {
        const t = d.telemetry(v.id);
        if (t) g.set({ id: v.id, name: v.name }, value(t));
      }
    });
  fromTelemetry('mvirt_vm_cpu_percent', 'Guest CPU busy (100 = one vCPU)', (t) => t.cpuPercent);
  fromTelemetry('mvirt_vm_memory_used_bytes', 'Guest memory in use', (t) => t.memUsedMiB * MiB);
  fromTelemetry(
    'mvirt_vm_memory_total_bytes',
    'Guest memory as the guest sees it',
    (t) => t.memTotalMiB * MiB,
  );
  fromTelemetry('mvirt_vm_load1', 'Guest load average over 1 minute', (t) => t.load1);
  fromTelemetry('mvirt_vm_uptime_seconds', 'Guest uptime', (t) => t.uptimeS);
  fromTelemetry('mvirt_vm_processes', 'Guest processes', (t) => t.procs);
  fromTelemetry('mvirt_vm_disk_used_bytes', 'Guest filesystems in use', (t) => t.diskUsedBytes);
  fromTelemetry('mvirt_vm_disk_total_bytes', 'Guest filesystem size', (t) => t.diskTotalBytes);
  fromTelemetry(
    'mvirt_vm_network_receive_bytes',
    'Guest bytes received since boot',
    (t) => t.netRxBytes,
  );
  fromTelemetry(
    'mvirt_vm_network_transmit_bytes',
    'Guest bytes sent since boot',
    (t) => t.netTxBytes,
  );

  // ---------------------------------------------------------------- histograms
  const boot = new client.Histogram({
    name: 'mvirt_vm_boot_stage_seconds',
    help: "Boot stages: kernel (kernel start → /init), init (/init → agent start), connect (agent start → channel up), from the agent's timeline; total (hypervisor launch → ready, host clock).",
    labelNames: ['stage'],
    buckets: BOOT_BUCKETS,
    registers: [registry],
  });
  const jobWait = new client.Histogram({
    name: 'mvirt_job_queue_seconds',
    help: 'Time a job waited from job.run until it started in a VM (includes an ephemeral boot).',
    buckets: JOB_BUCKETS,
    registers: [registry],
  });
  const jobRun = new client.Histogram({
    name: 'mvirt_job_run_seconds',
    help: 'Time from a job starting to its final state, by that state.',
    labelNames: ['state'],
    buckets: JOB_BUCKETS,
    registers: [registry],
  });

  return {
    contentType: registry.contentType,
    async metrics() {
      snap = { fig: d.figures(), vms: d.vms.list() };
      try {
        return await registry.metrics();
      } finally {
        snap = null;
      }
    },
    observeBoot(rec) {
      const b = rec.boot;
      if (!b) return;
      boot.observe({ stage: 'kernel' }, b.initS);
      boot.observe({ stage: 'init' }, Math.max(0, b.agentStartS - b.initS));
      boot.observe({ stage: 'connect' }, Math.max(0, b.connectedS - b.agentStartS));
      if (b.readyAtMs !== undefined) boot.observe({ stage: 'total' }, b.readyAtMs / 1000);
    },
    observeJob(rec) {
      const wait = seconds(rec.createdAt, rec.startedAt);
      if (wait !== null) jobWait.observe(wait);
      const run = seconds(rec.startedAt, rec.finishedAt);
      if (run !== null) jobRun.observe({ state: rec.state }, run);
    },
  };
}
