/**
 * The selected VM's disks: each volume of its record (id, read-only or
 * read-write) and, when the guest's telemetry lists a block device with that
 * serial, the guest's name for it, its size, and where it is mounted with the
 * usage of that mount. Everything the guest reports is text (h() never parses
 * markup).
 */
import type { VmTelemetry } from '../../protocol/metrics.js';
import type { VmRecord } from '../../protocol/rpc.js';
import { h } from './dom.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n: number): string {
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${UNITS[i]}`;
}

/** Rows for `#vm-disks`' body; one row saying so when the VM has no disks. */
export function diskRows(v: VmRecord, t: VmTelemetry | undefined): HTMLTableRowElement[] {
  const disks = v.disks ?? [];
  if (disks.length === 0)
    return [h('tr', { class: 'none' }, h('td', { colspan: '6' }, 'no volumes attached'))];
  return disks.map((d) => {
    const dev = t?.blockDevices?.find((b) => b.serial === d.serial);
    const use = dev?.mount ? t?.disk.find((u) => u.mount === dev.mount) : undefined;
    return h(
      'tr',
      { class: 'disk', 'data-volume': d.volume, 'data-guest': dev?.name },
      h('td', {}, d.volume),
      h('td', {}, d.readOnly ? 'read-only' : 'read-write'),
      h('td', {}, dev ? `/dev/${dev.name}` : '–'),
      h('td', {}, dev ? bytes(dev.sizeBytes) : '–'),
      h('td', {}, dev?.mount ?? '–'),
      h('td', {}, use ? `${bytes(use.usedBytes)} of ${bytes(use.totalBytes)}` : '–'),
    );
  });
}
