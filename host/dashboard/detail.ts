/**
 * The selected VM: CPU and memory charts (uPlot; history from metrics.query,
 * then every live telemetry sample), how it started (its boot timeline from
 * the agent's hello, or its restore beside a cold boot: restore.ts), and its
 * disks (disks.ts). `data-points` on each chart says how many samples it draws.
 */
import uPlot from 'uplot';
import type { VmRecord } from '../../protocol/rpc.js';
import type { Conn } from './conn.js';
import { diskRows } from './disks.js';
import { byId, h } from './dom.js';
import { emptySeries, type Model, type Series } from './model.js';
import { startView, type Timeline } from './restore.js';

const HISTORY_S = 15 * 60;

/** Short y-axis labels: 1.5k rather than 1,500 cut off by the axis width. */
const axisLabel = (v: number): string =>
  Math.abs(v) >= 10_000
    ? `${(v / 1000).toFixed(0)}k`
    : Math.abs(v) >= 1000
      ? `${(v / 1000).toFixed(1)}k`
      : String(v);

function chart(el: HTMLElement, series: uPlot.Series[]): uPlot {
  const width = Math.max(240, el.clientWidth || 480);
  return new uPlot(
    {
      width,
      height: 160,
      series: [{}, ...series],
      scales: { x: { time: true } },
      axes: [{}, { size: 60, values: (_u, vals) => vals.map(axisLabel) }],
      legend: { show: true },
    },
    [[], ...series.map(() => [])],
    el,
  );
}

const pct = (x: number): string => `${(Math.min(1, Math.max(0, x)) * 100).toFixed(2)}%`;

function bar(t: Timeline, scaleMs: number): HTMLElement {
  const sum = t.segments.reduce((a, x) => a + x.ms, 0) || 1;
  return h(
    'div',
    {
      class: `timeline ${t.kind}`,
      'data-kind': t.kind,
      'data-vm': t.vm,
      'data-total-ms': String(Math.round(t.totalMs)),
    },
    h('div', { class: 'label' }, t.label),
    h(
      'div',
      { class: 'bar', style: `width:${pct(t.totalMs / scaleMs)}` },
      ...t.segments.map((x) =>
        h(
          'div',
          {
            class: `seg ${x.stage}`,
            style: `width:${pct(x.ms / sum)}`,
            title: `${x.stage}: ${(x.ms / 1000).toFixed(2)} s, ${x.about}`,
            'data-stage': x.stage,
            'data-seconds': (x.ms / 1000).toFixed(3),
          },
          `${x.stage} ${(x.ms / 1000).toFixed(2)} s`,
        ),
      ),
    ),
    h('p', {}, t.note),
  );
}

/** The VM's start: a restore beside a cold boot on one scale, and what the restore fixed. */
function startTimeline(v: VmRecord, m: Model): HTMLElement[] {
  const s = startView(v, m.vms, m.snapshots);
  if (s.empty !== undefined) return [h('p', {}, s.empty)];
  const facts = s.facts.map((f) =>
    h(
      'div',
      { 'data-fact': f.key, 'data-level': f.level },
      h('dt', {}, f.label),
      h('dd', {}, f.value),
    ),
  );
  return [
    ...s.bars.map((t) => bar(t, s.scaleMs)),
    ...(facts.length > 0 ? [h('dl', { class: 'facts' }, ...facts)] : []),
  ];
}

export function detailView(m: Model, conn: Conn): { select(id: string): void } {
  const panel = byId('vm-detail');
  const title = byId('vm-title');
  const cpuEl = byId('chart-cpu');
  const memEl = byId('chart-mem');
  const boot = byId('boot-timeline');
  const disks = byId('vm-disks-body');
  let cpu: uPlot | null = null;
  let mem: uPlot | null = null;
  let shown: string | null = null;

  const draw = (s: Series | undefined): void => {
    const d = s ?? emptySeries();
    cpu?.setData([d.t, d.cpuPercent]);
    mem?.setData([d.t, d.memUsedMiB, d.memTotalMiB]);
    cpuEl.dataset.points = String(d.t.length);
    memEl.dataset.points = String(d.t.length);
  };

  m.on('detail', () => {
    const id = m.selectedVm;
    const v = id ? m.vms.get(id) : undefined;
    panel.hidden = !v;
    if (!v) return;
    panel.dataset.vm = v.id;
    title.textContent = `${v.name} · ${v.state} · ${v.id}`;
    if (shown !== v.id) {
      shown = v.id;
      cpu?.destroy();
      mem?.destroy();
      cpu = chart(cpuEl, [{ label: 'CPU %', stroke: '#2b6cb0', width: 2 }]);
      mem = chart(memEl, [
        { label: 'used MiB', stroke: '#2f855a', width: 2, fill: 'rgba(47,133,90,0.1)' },
        { label: 'total MiB', stroke: '#a0aec0', dash: [4, 4] },
      ]);
    }
    draw(m.series.get(v.id));
    boot.replaceChildren(...startTimeline(v, m));
    disks.replaceChildren(...diskRows(v, m.telemetry.get(v.id)));
  });

  return {
    select(id) {
      m.selectedVm = id;
      m.changed('vms');
      m.changed('detail');
      const now = Date.now();
      // Roll-ups fill the chart's past; live telemetry continues it.
      conn
        .call('metrics.query', { vm: id, from: now - HISTORY_S * 1000, to: now })
        .then((r) => m.seedSeries(id, r.points))
        .catch(() => undefined);
    },
  };
}
