/**
 * Every host that publishes a status on this broker (on an mvirtd with
 * --uplink, the whole fleet: host/fleet/view.ts), in the header with its
 * figures, and below with a chart of its CPU and memory (uPlot, from the
 * statuses' `figures` since the page opened). `data-points` on each chart
 * says how many samples it draws.
 */
import uPlot from 'uplot';
import type { HostStatus } from '../../protocol/records.js';
import { byId, fmt, h } from './dom.js';
import type { Model } from './model.js';

/** Samples kept per host: an hour at the default 5 s status interval. */
const HOST_SERIES_MAX = 720;

function hostLine(s: HostStatus): HTMLElement {
  const f = s.figures;
  const vms = Object.entries(s.vms ?? {})
    .filter(([, n]) => n > 0)
    .map(([st, n]) => `${n} ${st}`)
    .join(', ');
  const parts = [
    s.online ? 'online' : 'offline',
    f ? `CPU ${fmt.pct(f.cpuPercent)}` : '',
    f ? `mem ${fmt.mib(f.memUsedMiB)} / ${fmt.mib(f.memTotalMiB)}` : '',
    s.allocated ? `allocated ${s.allocated.vcpus} vCPU, ${fmt.mib(s.allocated.memoryMiB)}` : '',
    vms ? `VMs: ${vms}` : '',
    s.broker ? `${s.broker.clients} clients, ${s.broker.inPerSec.toFixed(0)} msg/s` : '',
  ].filter(Boolean);
  return h(
    'span',
    { class: `host${s.online ? '' : ' offline'}`, 'data-host': s.hostId },
    h('b', {}, s.hostId),
    parts.join(' · '),
  );
}

interface HostChart {
  el: HTMLElement;
  plot: uPlot;
  t: number[];
  cpu: number[];
  mem: number[];
  /** The `at` of the last status drawn: a status seen twice (retained again) is one sample. */
  last: string;
}

function hostChart(hostId: string): HostChart {
  const box = h('div', { class: 'chart', 'data-points': '0' });
  const el = h(
    'div',
    { class: 'host-chart', 'data-host': hostId },
    h('div', { class: 'chart-title' }, `${hostId}: CPU % of the host, memory used %`),
    box,
  );
  const plot = new uPlot(
    {
      width: 340,
      height: 120,
      series: [
        {},
        { label: 'CPU %', stroke: '#2b6cb0', width: 2 },
        { label: 'mem %', stroke: '#2f855a', width: 2 },
      ],
      scales: { x: { time: true }, y: { range: [0, 100] } },
      legend: { show: true },
    },
    [[], [], []],
    box,
  );
  return { el, plot, t: [], cpu: [], mem: [], last: '' };
}

export function hostsView(m: Model): void {
  const header = byId('hosts');
  const panel = byId('host-charts');
  const count = byId('host-count');
  const charts = new Map<string, HostChart>();
  m.on('hosts', () => {
    const hosts = [...m.hosts.values()].sort((a, b) => a.hostId.localeCompare(b.hostId));
    header.replaceChildren(...hosts.map(hostLine));
    count.textContent = `(${hosts.filter((s) => s.online).length} online of ${hosts.length})`;
    for (const s of hosts) {
      let c = charts.get(s.hostId);
      if (!c) {
        c = hostChart(s.hostId);
        charts.set(s.hostId, c);
      }
      c.el.classList.toggle('offline', !s.online);
      const f = s.figures;
      if (!f || s.at === c.last) continue;
      c.last = s.at;
      c.t.push(Date.parse(s.at) / 1000);
      c.cpu.push(f.cpuPercent / Math.max(1, s.cpus ?? 1));
      c.mem.push(f.memTotalMiB > 0 ? (f.memUsedMiB / f.memTotalMiB) * 100 : 0);
      if (c.t.length > HOST_SERIES_MAX) for (const a of [c.t, c.cpu, c.mem]) a.shift();
      c.plot.setData([c.t, c.cpu, c.mem]);
      c.el.querySelector('.chart')!.setAttribute('data-points', String(c.t.length));
    }
    panel.replaceChildren(...hosts.map((s) => charts.get(s.hostId)!.el));
  });
}
