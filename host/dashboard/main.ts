/**
 * The mvirt dashboard, served by mvirtd --http and bundled by esbuild
 * (build.ts). Everything it shows arrives over MQTT: retained state when it
 * subscribes, then live messages; nothing polls. Its buttons are RPC
 * requests, refused or allowed like any controller's.
 */
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { HostStatus, VmTelemetry } from '../../protocol/metrics.js';
import type { JobRecord, OutputChunk, VmRecord } from '../../protocol/rpc.js';
import { connect } from './conn.js';
import { detailView } from './detail.js';
import { byId, toast } from './dom.js';
import { eventsView } from './events.js';
import { hostsView } from './hosts.js';
import { jobsView } from './jobs.js';
import { createModel } from './model.js';
import { vmsView } from './vms.js';

const decoder = new TextDecoder();
const text = (p: Uint8Array): string => decoder.decode(p);
/** `<root>/<kind>/<id>/<leaf>` → id */
const idOf = (topic: string): string => topic.split('/').at(-2)!;

async function main(): Promise<void> {
  const status = byId('conn-status');
  const conn = await connect((s, why) => {
    status.dataset.state = s;
    status.textContent = why ? `${s}: ${why}` : s;
  });
  const m = createModel();
  hostsView(m);
  const detail = detailView(m, conn);
  vmsView(m, conn, (id) => detail.select(id));
  jobsView(m, conn);

  conn.subscribe(`${conn.prefix}/+/status`, (_t, p) => {
    const r = HostStatus.safeParse(JSON.parse(text(p)));
    if (!r.success) return console.warn('status not understood', r.error);
    m.hosts.set(r.data.hostId, r.data);
    m.changed('hosts');
  });
  conn.subscribe(conn.t.vmState('+'), (topic, p) => {
    m.setVm(idOf(topic), p.length === 0 ? null : (JSON.parse(text(p)) as VmRecord));
  });
  conn.subscribe(conn.t.vmTelemetry('+'), (_t, p) => {
    const r = VmTelemetry.safeParse(JSON.parse(text(p)));
    if (!r.success) return console.warn('telemetry not understood', r.error);
    m.addTelemetry(r.data);
  });
  conn.subscribe(conn.t.jobState('+'), (topic, p) => {
    m.setJob(idOf(topic), p.length === 0 ? null : (JSON.parse(text(p)) as JobRecord));
  });
  conn.subscribe(conn.t.jobOutput('+'), (topic, p) => {
    m.addOutput(idOf(topic), [JSON.parse(text(p)) as OutputChunk]);
  });
  eventsView(m, conn);
}

main().catch((err: unknown) => {
  const s = byId('conn-status');
  s.dataset.state = 'error';
  s.textContent = `cannot start: ${String((err as Error).message)}`;
  toast(String(err));
});
