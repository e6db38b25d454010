/** Jobs (retained job states, newest first) and the selected job's output, live. */
import type { JobRecord } from '../../protocol/rpc.js';
import type { Conn } from './conn.js';
import { byId, h } from './dom.js';
import type { Model } from './model.js';
import { chunkTexts } from './chunk-text.js';

function row(j: JobRecord, vmName: string | undefined, selected: boolean): HTMLTableRowElement {
  return h(
    'tr',
    { class: `job${selected ? ' selected' : ''}`, 'data-id': j.jobId, 'data-state': j.state },
    h('td', {}, j.jobId),
    h('td', {}, vmName ?? j.vm ?? '–'),
    h('td', {}, j.argv.join(' ').slice(0, 80)),
    h('td', {}, h('span', { class: `state ${j.state}` }, j.state)),
    h('td', { class: 'num' }, j.exitCode === null ? (j.signal ?? '') : String(j.exitCode)),
  );
}

export function jobsView(m: Model, conn: Conn): void {
  const body = byId('jobs').querySelector('tbody')!;
  const out = byId('job-output');

  m.on('jobs', () => {
    const jobs = [...m.jobs.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    body.replaceChildren(
      ...jobs.map((j) =>
        row(j, j.vm ? m.vms.get(j.vm)?.name : undefined, j.jobId === m.selectedJob),
      ),
    );
  });
  m.on('output', () => {
    const id = m.selectedJob;
    const chunks = id ? (m.output.get(id) ?? []) : [];
    out.dataset.job = id ?? '';
    out.hidden = id === null;
    const texts = chunkTexts(chunks);
    out.replaceChildren(
      ...chunks.map((c, i) =>
        c.stream === 'stderr' ? h('span', { class: 'stderr' }, texts[i]!) : texts[i]!,
      ),
    );
    out.scrollTop = out.scrollHeight;
  });

  body.addEventListener('click', (ev) => {
    const tr = (ev.target as HTMLElement).closest('tr.job') as HTMLTableRowElement | null;
    if (!tr) return;
    const id = tr.dataset.id!;
    m.selectedJob = id;
    m.changed('jobs');
    m.changed('output');
    // What was produced before the page watched: the stored log (first page).
    conn
      .call('job.logs', { jobId: id })
      .then((r) => m.addOutput(id, r.chunks))
      .catch(() => undefined);
  });
}
