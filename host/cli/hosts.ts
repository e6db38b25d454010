/**
 * `mvirt hosts`: every mvirtd under the prefix of the broker it connects to,
 * from their retained `<prefix>/+/status` (docs/fleet.md): on an external
 * broker with `mvirtd --uplink`, the whole fleet. No RPC: a host that is
 * offline is listed from its last will.
 */
import type { HostStatus } from '../../protocol/rpc.js';
import type { Command } from './command.js';
import { EXIT } from './exit.js';
import { json, keyValues, mib, relativeTime, table } from './output.js';

function allocation(h: HostStatus): string {
  if (!h.allocated) return '-';
  const of = h.limits ? `/${h.limits.vcpus}` : '';
  return `${h.allocated.vcpus}${of} vCPUs, ${mib(h.allocated.memoryMiB)}`;
}

function vmCount(h: HostStatus): string {
  if (!h.vms) return '-';
  const total = Object.values(h.vms).reduce((n, k) => n + (k ?? 0), 0);
  const busy = (h.vms.busy ?? 0) + (h.vms.ready ?? 0) + (h.vms.running ?? 0);
  return `${total} (${busy} up)`;
}

/** The table of `mvirt hosts`; `now` for the LAST SEEN column. */
export function hostsText(hosts: HostStatus[], now: number): string {
  if (hosts.length === 0) return 'no mvirt host announces itself under this prefix\n';
  return table(
    ['HOST', 'ONLINE', 'CPUS', 'MEMORY', 'ALLOCATED', 'VMS', 'UPLINK', 'LAST SEEN'],
    hosts.map((h) => [
      h.hostId,
      h.online ? 'yes' : 'no',
      h.cpus === undefined ? '-' : String(h.cpus),
      h.memoryMiB === undefined ? '-' : mib(h.memoryMiB),
      allocation(h),
      vmCount(h),
      h.uplink
        ? `${h.uplink.broker}${h.uplink.dropped ? ` (${h.uplink.dropped} dropped)` : ''}`
        : '-',
      relativeTime(h.at, now),
    ]),
  );
}

/** What the online hosts add up to (`mvirt info --fleet`). */
export function fleetTotals(hosts: HostStatus[]) {
  const online = hosts.filter((h) => h.online);
  const sum = (f: (h: HostStatus) => number | undefined): number =>
    online.reduce((n, h) => n + (f(h) ?? 0), 0);
  const vms: Record<string, number> = {};
  for (const h of online)
    for (const [state, n] of Object.entries(h.vms ?? {})) vms[state] = (vms[state] ?? 0) + (n ?? 0);
  return {
    hosts: hosts.length,
    online: online.length,
    cpus: sum((h) => h.cpus),
    memoryMiB: sum((h) => h.memoryMiB),
    allocated: {
      vcpus: sum((h) => h.allocated?.vcpus),
      memoryMiB: sum((h) => h.allocated?.memoryMiB),
    },
    vms,
  };
}

export function fleetText(hosts: HostStatus[], now: number): string {
  const t = fleetTotals(hosts);
  const counts = Object.entries(t.vms)
    .filter(([, n]) => n > 0)
    .map(([s, n]) => `${n} ${s}`);
  return `${keyValues([
    ['Hosts', `${t.online} online of ${t.hosts}`],
    ['CPUs', String(t.cpus)],
    ['Memory', mib(t.memoryMiB)],
    ['Allocated', `${t.allocated.vcpus} vCPUs, ${mib(t.allocated.memoryMiB)}`],
    ['VMs', counts.length ? counts.join(', ') : 'none'],
  ])}\n${hostsText(hosts, now)}`;
}

/** What a job's ephemeral VM needs of a host (`mvirt run --fleet`). */
export interface FleetNeed {
  /** An image the host must have; undefined: its default image. */
  image?: string;
  /** Labels the host must have (mvirtd --label K=V), all of them. */
  labels?: Record<string, string>;
  vcpus: number;
  memoryMiB: number;
}

/**
 * Client-side placement from the retained statuses: the online host with
 * the most free memory among those that have the image and room; or why
 * none. The host's own admission control still decides (CAPACITY_EXCEEDED
 * if another controller took the room meanwhile).
 */
export function placeJob(
  hosts: HostStatus[],
  need: FleetNeed,
): { hostId: string } | { problem: string } {
  const online = hosts.filter((h) => h.online);
  if (online.length === 0) return { problem: 'no mvirt host is online on this broker' };
  const free = (h: HostStatus) => ({
    vcpus: (h.limits?.vcpus ?? h.cpus ?? 0) - (h.allocated?.vcpus ?? 0),
    memoryMiB: (h.limits?.memoryMiB ?? h.memoryMiB ?? 0) - (h.allocated?.memoryMiB ?? 0),
  });
  const wanted = Object.entries(need.labels ?? {});
  const labelled = online.filter((h) => wanted.every(([k, v]) => h.labels?.[k] === v));
  if (labelled.length === 0)
    return {
      problem: `no online host has the labels ${wanted.map(([k, v]) => `${k}=${v}`).join(', ')}`,
    };
  const withImage = labelled.filter(
    (h) => need.image === undefined || (h.images ?? []).includes(need.image),
  );
  if (withImage.length === 0)
    return { problem: `no online host has the image ${need.image ?? ''}` };
  const fits = withImage
    .filter((h) => free(h).vcpus >= need.vcpus && free(h).memoryMiB >= need.memoryMiB)
    .sort((a, b) => free(b).memoryMiB - free(a).memoryMiB || a.hostId.localeCompare(b.hostId));
  if (fits.length === 0)
    return {
      problem: `no online host has room for ${need.vcpus} vCPUs and ${mib(need.memoryMiB)} (${withImage
        .map((h) => `${h.hostId}: ${free(h).vcpus} vCPUs, ${mib(free(h).memoryMiB)} free`)
        .join('; ')})`,
    };
  return { hostId: fits[0]!.hostId };
}

export const hostsCommands: Command[] = [
  {
    name: 'hosts',
    summary: 'List every mvirt host on the broker: online, capacity, allocation, VMs, last seen.',
    description:
      "Read from the hosts' retained status topics: with mvirtd --uplink, every host of the fleet on that broker (docs/fleet.md). An offline host shows its last will; LAST SEEN is the time of its last status.",
    examples: [
      'mvirt hosts',
      'mvirt hosts --json',
      'mvirt --broker mqtts://fleet.example:8884 hosts',
    ],
    run: async (ctx) => {
      const hosts = await ctx.hosts();
      ctx.out(ctx.globals.json ? json(hosts) : hostsText(hosts, Date.now()));
      return EXIT.OK;
    },
  },
];
