/**
 * The VM table: one row per VM, updated in place (a row is rebuilt only when
 * its VM or its figures changed), start/stop/kill buttons that send the same
 * RPCs as any controller. A restored VM is marked (restore.ts), and a
 * suspended VM's start button says resume.
 */
import type { VmTelemetry } from '../../protocol/metrics.js';
import type { SnapshotRecord, VmRecord } from '../../protocol/records.js';
import {
  ACTIVE_VM_STATES,
  INACTIVE_VM_STATES,
  LIVE_VM_STATES,
  isActiveVm,
  type VmState,
} from '../../protocol/states.js';
import type { Conn } from './conn.js';
import { byId, fmt, h, toast } from './dom.js';
import type { Model } from './model.js';
import { restoreMark } from './restore.js';

type Action = 'start' | 'stop' | 'kill';

const ALLOWED: Record<Action, readonly VmState[]> = {
  start: INACTIVE_VM_STATES,
  stop: LIVE_VM_STATES,
  kill: ACTIVE_VM_STATES,
};

function row(
  v: VmRecord,
  t: VmTelemetry | undefined,
  selected: boolean,
  snaps: ReadonlyMap<string, SnapshotRecord>,
): HTMLTableRowElement {
  const up = t !== undefined && isActiveVm(v.state);
  const mark = restoreMark(v, snaps);
  const buttons = (['start', 'stop', 'kill'] as const).map((a) => {
    const label = a === 'start' && v.state === 'suspended' ? 'resume' : a;
    const b = h('button', { 'data-action': a, type: 'button' }, label);
    b.disabled = !ALLOWED[a].includes(v.state);
    return b;
  });
  return h(
    'tr',
    {
      class: `vm${selected ? ' selected' : ''}`,
      'data-id': v.id,
      'data-name': v.name,
      'data-state': v.state,
      'data-restored': mark?.kind,
    },
    h(
      'td',
      {},
      v.name,
      ...(mark
        ? [' ', h('span', { class: `mark ${mark.kind}`, title: mark.title }, mark.text)]
        : []),
    ),
    h('td', {}, h('span', { class: `state ${v.state}` }, v.state)),
    h('td', { class: 'num' }, String(v.vcpus)),
    h('td', { class: 'num' }, fmt.mib(v.memoryMiB)),
    h('td', { class: 'num' }, up ? fmt.pct(t.cpuPercent) : '–'),
    h('td', { class: 'num' }, up ? fmt.mib(t.memUsedMiB) : '–'),
    h('td', {}, ...buttons),
  );
}

export function vmsView(m: Model, conn: Conn, select: (id: string) => void): void {
  const body = byId('vms').querySelector('tbody')!;
  const count = byId('vm-count');
  const rows = new Map<string, { el: HTMLTableRowElement; key: unknown[] }>();

  m.on('vms', () => {
    const vms = [...m.vms.values()].sort((a, b) => a.name.localeCompare(b.name));
    const next: HTMLTableRowElement[] = [];
    for (const v of vms) {
      const t = m.telemetry.get(v.id);
      // A fork's mark names its snapshot: the row changes with that record too.
      const snap = v.restoredFrom !== undefined ? m.snapshots.get(v.restoredFrom) : undefined;
      const key = [v, t, m.selectedVm === v.id, snap];
      const cur = rows.get(v.id);
      if (cur && cur.key.every((k, i) => k === key[i])) next.push(cur.el);
      else {
        const el = row(v, t, m.selectedVm === v.id, m.snapshots);
        rows.set(v.id, { el, key });
        next.push(el);
      }
    }
    for (const id of rows.keys()) if (!m.vms.has(id)) rows.delete(id);
    // Re-inserting 200 unchanged rows costs a relayout each frame while the
    // retained states pour in: touch only what changed when the order holds.
    const cur = body.children;
    const inPlace =
      cur.length === next.length && next.every((el, i) => el === cur[i] || el.parentNode === null);
    if (inPlace) {
      for (let i = 0; i < next.length; i++) if (cur[i] !== next[i]) cur[i]!.replaceWith(next[i]!);
    } else body.replaceChildren(...next);
    count.textContent = `(${vms.length})`;
    document.body.dataset.vmCount = String(vms.length);
  });

  // Selecting on pointerdown, not click: rows are replaced as their VM
  // changes (a state, a telemetry figure), and a row replaced between the
  // press and the release gets no click at all (CI lost one that way).
  body.addEventListener('pointerdown', (ev) => {
    const target = ev.target as HTMLElement;
    const tr = target.closest('tr.vm') as HTMLTableRowElement | null;
    if (!tr || ev.button !== 0 || target.closest('button')) return;
    select(tr.dataset.id!);
  });
  body.addEventListener('click', (ev) => {
    const target = ev.target as HTMLElement;
    const tr = target.closest('tr.vm') as HTMLTableRowElement | null;
    if (!tr) return;
    const id = tr.dataset.id!;
    const action = target.closest('button')?.dataset.action as Action | undefined;
    // Keyboard activation (Enter on a focused row) has no pointerdown.
    if (!action) return ev.detail === 0 ? select(id) : undefined;
    const name = tr.dataset.name!;
    const p =
      action === 'start'
        ? conn.call('vm.start', { vm: id })
        : action === 'stop'
          ? conn.call('vm.stop', { vm: id })
          : conn.call('vm.kill', { vm: id });
    p.catch((err: unknown) => toast(`${action} ${name}: ${String((err as Error).message)}`));
  });
}
