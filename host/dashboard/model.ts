/**
 * What the page knows, fed only by messages (retained state, live topics,
 * replies): VMs, their recent telemetry, hosts, jobs with their output, the
 * event log. Views register for the parts they draw; changes are coalesced
 * into one render per animation frame, so a burst of retained messages (200
 * VMs at connect) costs one render, not 200.
 */
import type { MetricField, MetricPoint, VmTelemetry } from '../../protocol/metrics.js';
import type { HostStatus, SnapshotRecord } from '../../protocol/records.js';
import type { EventRecord, JobRecord, OutputChunk, VmRecord } from '../../protocol/rpc.js';

export type Part = 'hosts' | 'vms' | 'detail' | 'jobs' | 'output' | 'events' | 'snapshots';

/**
 * The figures the VM charts draw, by their protocol names: live telemetry and
 * metrics.query points both carry them (METRIC_FIELDS in protocol/metrics.ts).
 */
export const CHARTED = [
  'cpuPercent',
  'memUsedMiB',
  'memTotalMiB',
] as const satisfies readonly MetricField[];
type Charted = (typeof CHARTED)[number];

/** Recent samples of one VM, oldest first (chart data; t in seconds). */
export type Series = { t: number[] } & Record<Charted, number[]>;

const SERIES_MAX = 720;
const EVENTS_MAX = 1000;
const JOBS_MAX = 200;
const OUTPUT_CHARS_MAX = 256 * 1024;

export interface Model {
  readonly vms: Map<string, VmRecord>;
  readonly telemetry: Map<string, VmTelemetry>;
  readonly series: Map<string, Series>;
  readonly hosts: Map<string, HostStatus>;
  readonly jobs: Map<string, JobRecord>;
  readonly output: Map<string, OutputChunk[]>;
  /** VM snapshots as snapshot.list last said (no retained topic carries them). */
  readonly snapshots: Map<string, SnapshotRecord>;
  events: EventRecord[];
  selectedVm: string | null;
  selectedJob: string | null;
  changed(part: Part): void;
  on(part: Part, render: () => void): void;
  setVm(id: string, rec: VmRecord | null): void;
  addTelemetry(t: VmTelemetry): void;
  /** Seed a VM's chart from metrics.query points (older than anything live). */
  seedSeries(id: string, points: Pick<MetricPoint, 't' | Charted>[]): void;
  setJob(id: string, rec: JobRecord | null): void;
  addOutput(id: string, chunks: OutputChunk[]): void;
  addEvents(es: EventRecord[]): void;
  setSnapshots(list: SnapshotRecord[]): void;
}

export const emptySeries = (): Series => ({
  t: [],
  cpuPercent: [],
  memUsedMiB: [],
  memTotalMiB: [],
});

export function createModel(): Model {
  const renders = new Map<Part, (() => void)[]>();
  const dirty = new Set<Part>();
  let frame = false;

  const flush = (): void => {
    frame = false;
    const parts = [...dirty];
    dirty.clear();
    for (const p of parts) for (const r of renders.get(p) ?? []) r();
  };

  const m: Model = {
    vms: new Map(),
    telemetry: new Map(),
    series: new Map(),
    hosts: new Map(),
    jobs: new Map(),
    output: new Map(),
    snapshots: new Map(),
    events: [],
    selectedVm: null,
    selectedJob: null,
    changed(part) {
      dirty.add(part);
      if (!frame) {
        frame = true;
        requestAnimationFrame(flush);
      }
    },
    on(part, render) {
      renders.set(part, [...(renders.get(part) ?? []), render]);
    },
    setVm(id, rec) {
      if (rec) m.vms.set(id, rec);
      else {
        m.vms.delete(id);
        m.telemetry.delete(id);
        m.series.delete(id);
        if (m.selectedVm === id) m.selectedVm = null;
      }
      m.changed('vms');
      // A fork's detail compares its restore with its source's cold boot.
      const sel = m.selectedVm !== null ? m.vms.get(m.selectedVm) : undefined;
      if (m.selectedVm === id || sel?.restore?.previousVm === id) m.changed('detail');
    },
    addTelemetry(t) {
      m.telemetry.set(t.vmId, t);
      let s = m.series.get(t.vmId);
      if (!s) m.series.set(t.vmId, (s = emptySeries()));
      const sec = t.receivedAt / 1000;
      if (s.t.length > 0 && sec <= s.t[s.t.length - 1]!) return;
      s.t.push(sec);
      for (const f of CHARTED) s[f].push(t[f]);
      if (s.t.length > SERIES_MAX) for (const a of Object.values(s) as number[][]) a.shift();
      m.changed('vms');
      if (m.selectedVm === t.vmId) m.changed('detail');
    },
    seedSeries(id, points) {
      const live = m.series.get(id) ?? emptySeries();
      const first = live.t[0] ?? Infinity;
      const old = points.filter((p) => p.t / 1000 < first);
      const s: Series = { ...emptySeries(), t: [...old.map((p) => p.t / 1000), ...live.t] };
      for (const f of CHARTED) s[f] = [...old.map((p) => p[f]), ...live[f]];
      m.series.set(id, s);
      if (m.selectedVm === id) m.changed('detail');
    },
    setJob(id, rec) {
      if (rec) m.jobs.set(id, rec);
      // An empty retained message clears a finished job's state: keep showing it.
      if (m.jobs.size > JOBS_MAX) {
        const oldest = [...m.jobs.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt));
        for (const j of oldest.slice(0, m.jobs.size - JOBS_MAX)) {
          m.jobs.delete(j.jobId);
          m.output.delete(j.jobId);
        }
      }
      m.changed('jobs');
    },
    addOutput(id, chunks) {
      const cur = m.output.get(id) ?? [];
      const seen = new Set(cur.map((c) => c.seq));
      const next = [...cur, ...chunks.filter((c) => !seen.has(c.seq))].sort(
        (a, b) => a.seq - b.seq,
      );
      let chars = next.reduce((n, c) => n + c.data.length, 0);
      while (chars > OUTPUT_CHARS_MAX && next.length > 1) chars -= next.shift()!.data.length;
      m.output.set(id, next);
      if (m.selectedJob === id) m.changed('output');
    },
    addEvents(es) {
      const have = new Set(m.events.map((e) => e.id));
      const add = es.filter((e) => !have.has(e.id));
      if (add.length === 0) return;
      m.events = [...m.events, ...add].sort((a, b) => a.id - b.id).slice(-EVENTS_MAX);
      m.changed('events');
    },
    setSnapshots(list) {
      m.snapshots.clear();
      for (const s of list) m.snapshots.set(s.id, s);
      m.changed('snapshots');
      // Marks and the detail view name the snapshots a VM was made from.
      m.changed('vms');
      if (m.selectedVm !== null) m.changed('detail');
    },
  };
  return m;
}
