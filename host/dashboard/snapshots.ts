/**
 * Snapshots and restores. The snapshot table is read-only: snapshot.list when
 * the page starts and again whenever the event log says a snapshot was taken
 * or deleted (no retained topic carries snapshots). A restored VM's record is
 * asked for again (vm.get) on its `restored` event: the agent's report (clock
 * step, entropy, identity) lands in the record after the VM became ready, and
 * its retained state is not published again for it.
 */
import type { SnapshotRecord } from '../../protocol/records.js';
import type { Conn } from './conn.js';
import { byId, fmt, h } from './dom.js';
import type { Model } from './model.js';
import { bytes } from './disks.js';
import { listLoader, rowsOrNone } from './table.js';
import type * as schemaModule from './schemas.js';

type Schemas = typeof schemaModule;

function row(s: SnapshotRecord, forks: string[]): HTMLTableRowElement {
  return h(
    'tr',
    { class: 'snapshot', 'data-id': s.id, 'data-state': s.state },
    h('td', { title: s.id }, s.name),
    h('td', { title: s.source.vm }, s.source.name),
    h('td', {}, h('span', { class: `state ${s.state}` }, s.state)),
    h('td', { class: 'num' }, bytes(s.bytes)),
    h('td', {}, fmt.time(s.createdAt)),
    h('td', {}, forks.length > 0 ? forks.join(', ') : '–'),
  );
}

export function snapshotsView(m: Model, conn: Conn, schemas: Promise<Schemas>): void {
  const body = byId('snapshots').querySelector('tbody')!;
  const count = byId('snapshot-count');

  let drawn = '';
  const draw = (): void => {
    const snaps = [...m.snapshots.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    const forks = new Map<string, string[]>();
    for (const v of m.vms.values())
      if (v.restoredFrom !== undefined)
        forks.set(v.restoredFrom, [...(forks.get(v.restoredFrom) ?? []), v.name]);
    // Most VM changes (states, figures) change nothing here.
    const key = JSON.stringify([snaps, [...forks]]);
    if (key === drawn) return;
    drawn = key;
    body.replaceChildren(
      ...rowsOrNone(
        snaps.map((s) => row(s, (forks.get(s.id) ?? []).sort())),
        6,
        'no snapshots',
      ),
    );
    count.textContent = `(${snaps.length})`;
  };
  m.on('snapshots', draw);
  // The forks column follows the VMs (created, deleted).
  m.on('vms', draw);

  listLoader({
    conn,
    schemas,
    method: 'snapshot.list',
    parse: (r, v) => v.SnapshotRecord.array().safeParse(r.snapshots),
    use: (snapshots) => m.setSnapshots(snapshots),
    reloadOn: (e) => e.component === 'snapshot',
  });
  conn.subscribe(conn.t.vmEvents('+'), (topic, payload) => {
    const json: unknown = JSON.parse(new TextDecoder().decode(payload));
    const id = topic.split('/').at(-2)!;
    void schemas.then((v) => {
      const e = v.VmEvent.safeParse(json);
      if (!e.success || e.data.type !== 'restored') return;
      return conn.call('vm.get', { vm: id }).then((raw) => {
        const r = v.VmRecord.safeParse(raw);
        if (!r.success) return console.warn('vm.get not understood', r.error);
        // A retained state newer than this reply may have come first: keep it.
        const cur = m.vms.get(id);
        if (cur && cur.updatedAt > r.data.updatedAt) return;
        m.setVm(id, r.data);
      });
    });
  });
}
