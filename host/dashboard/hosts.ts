/** The header: every host that publishes a status on this broker, with its figures. */
import type { HostStatus } from '../../protocol/records.js';
import { byId, fmt, h } from './dom.js';
import type { Model } from './model.js';

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

export function hostsView(m: Model): void {
  const el = byId('hosts');
  m.on('hosts', () => {
    el.replaceChildren(...[...m.hosts.values()].map(hostLine));
  });
}
