/**
 * The mvirt dashboard, served by mvirtd --http and bundled by esbuild
 * (build.ts). Everything it shows arrives over MQTT: retained state when it
 * subscribes, then live messages; nothing polls. Its buttons are RPC
 * requests, refused or allowed like any controller's.
 */
// First: mqtt.js must see the unclamped zero-delay timers when it starts.
import './ticks.js';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import type { DashboardSession } from '../../protocol/http.js';
import type { VmRecord } from '../../protocol/records.js';
import { connect } from './conn.js';
import { detailView } from './detail.js';
import { byId, toast } from './dom.js';
import { eventsView } from './events.js';
import { hostsView } from './hosts.js';
import { jobsView } from './jobs.js';
import { createModel } from './model.js';
import { snapshotsView } from './snapshots.js';
import { imagesView } from './images.js';
import { vmsView } from './vms.js';

const decoder = new TextDecoder();
const text = (p: Uint8Array): string => decoder.decode(p);
/** `<root>/<kind>/<id>/<leaf>` → id */
const idOf = (topic: string): string => topic.split('/').at(-2)!;

async function main(): Promise<void> {
  // Marks for the first-render bench (bench/dashboard.ts) and for devtools.
  performance.mark('mvirt:start');
  const schemas = import('./schemas.js');
  const status = byId('conn-status');
  // index.html preloads /session: it is here before the bundle has started.
  const res = await fetch('/session');
  if (!res.ok) throw new Error(`/session: HTTP ${res.status}`);
  const raw: unknown = await res.json();
  // Connect at once; the session is validated as soon as zod is there, and
  // an answer that does not fit ends the connection (fail closed).
  const conn = connect(raw as DashboardSession, (s, why) => {
    if (s === 'connected' && performance.getEntriesByName('mvirt:connected').length === 0)
      performance.mark('mvirt:connected');
    status.dataset.state = s;
    status.textContent = why ? `${s}: ${why}` : s;
  });
  void schemas
    .then((v) => {
      const r = v.DashboardSession.safeParse(raw);
      if (r.success) return;
      conn.close();
      throw new Error(`/session answered something else: ${r.error.message}`);
    })
    .catch(fail);
  const m = createModel();
  hostsView(m);
  const detail = detailView(m, conn);
  vmsView(m, conn, (id) => detail.select(id));
  jobsView(m, conn);

  // Validated messages keep their order: each waits for the same promise.
  conn.subscribe(`${conn.prefix}/+/status`, (_t, p) => {
    const json: unknown = JSON.parse(text(p));
    void schemas.then((v) => {
      const r = v.HostStatus.safeParse(json);
      if (!r.success) return console.warn('status not understood', r.error);
      m.hosts.set(r.data.hostId, r.data);
      m.changed('hosts');
    });
  });
  // VM states are drawn unvalidated: the first render must not wait for zod
  // (bench/dashboard.ts: 200 VMs within 1 s). Everything else waits for it.
  conn.subscribe(conn.t.vmState('+'), (topic, p) => {
    if (m.vms.size === 0) performance.mark('mvirt:first-state');
    m.setVm(idOf(topic), p.length === 0 ? null : (JSON.parse(text(p)) as VmRecord));
  });
  conn.subscribe(conn.t.vmTelemetry('+'), (_t, p) => {
    const json: unknown = JSON.parse(text(p));
    void schemas.then((v) => {
      const r = v.VmTelemetry.safeParse(json);
      if (!r.success) return console.warn('telemetry not understood', r.error);
      m.addTelemetry(r.data);
    });
  });
  conn.subscribe(conn.t.jobState('+'), (topic, p) => {
    const json: unknown = p.length === 0 ? null : JSON.parse(text(p));
    void schemas.then((v) => {
      if (json === null) return m.setJob(idOf(topic), null);
      const r = v.JobRecord.safeParse(json);
      if (!r.success) return console.warn('job state not understood', r.error);
      m.setJob(idOf(topic), r.data);
    });
  });
  conn.subscribe(conn.t.jobOutput('+'), (topic, p) => {
    const json: unknown = JSON.parse(text(p));
    void schemas.then((v) => {
      const r = v.OutputChunk.safeParse(json);
      if (!r.success) return console.warn('job output not understood', r.error);
      m.addOutput(idOf(topic), [r.data]);
    });
  });
  eventsView(m, conn);
  snapshotsView(m, conn, schemas);
  imagesView(conn, schemas);
}

function fail(err: unknown): void {
  const s = byId('conn-status');
  s.dataset.state = 'error';
  s.textContent = `cannot start: ${String((err as Error).message)}`;
  toast(String(err));
}

main().catch(fail);
