/**
 * `mvirt hosts`: every mvirtd under the prefix of the broker it connects to,
 * from their retained `<prefix>/+/status` (docs/fleet.md): on an external
 * broker with `mvirtd --uplink`, the whole fleet. No RPC: a host that is
 * offline is listed from its last will.
 */
import type { QueuedRequest } from '../../protocol/fleet-client.js';
import type { HostStatus } from '../../protocol/rpc.js';
import { UsageError } from './args.js';
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

/** `--label K=V` arguments (with --fleet): the labels a host must have (mvirtd --label). */
export function parseLabels(args: string[], command: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of args) {
    const eq = l.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label expects K=V, got ${JSON.stringify(l)}`, command);
    labels[l.slice(0, eq)] = l.slice(eq + 1);
  }
  return labels;
}

/** The table of `mvirt hosts --queue`: fleet requests no host has taken yet. */
export function queueText(queue: QueuedRequest[], now: number): string {
  if (queue.length === 0) return 'the fleet queue is empty\n';
  return table(
    ['REQUEST', 'METHOD', 'BY', 'NEEDS', 'WAITING', 'GIVES UP'],
    queue.map((r) => [
      r.id,
      r.method,
      r.clientId,
      [
        ...(r.need?.host !== undefined ? [`host=${r.need.host}`] : []),
        ...Object.entries(r.need?.labels ?? {}).map(([k, v]) => `${k}=${v}`),
        `${r.params.vcpus ?? '-'} vCPUs`,
        r.params.memoryMiB !== undefined ? mib(r.params.memoryMiB) : '- MiB',
        ...(r.method === 'job.run' && r.params.pool !== undefined ? [`pool ${r.params.pool}`] : []),
        ...(r.params.image !== undefined ? [`image ${r.params.image}`] : []),
      ].join(', '),
      relativeTime(r.at, now),
      relativeTime(r.expiresAt, now),
    ]),
  );
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
      'mvirt hosts --queue',
      'mvirt --broker mqtts://fleet.example:8884 hosts',
    ],
    options: {
      queue: {
        type: 'boolean',
        help: 'list the fleet queue instead: job.run and vm.create requests no host has taken yet',
      },
    },
    run: async (ctx, p) => {
      if (p.values.queue === true) {
        const queue = await (await ctx.fleet()).queue();
        ctx.out(ctx.globals.json ? json(queue) : queueText(queue, Date.now()));
        return EXIT.OK;
      }
      const hosts = await ctx.hosts();
      ctx.out(ctx.globals.json ? json(hosts) : hostsText(hosts, Date.now()));
      return EXIT.OK;
    },
  },
];
