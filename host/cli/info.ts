/** `mvirt info`: the host as `system.info` describes it. */
import type { SystemInfo } from '../../protocol/rpc.js';
import type { Command } from './command.js';
import { EXIT } from './exit.js';
import { fleetText, fleetTotals } from './hosts.js';
import { json, keyValues, mib, table } from './output.js';

export function infoText(i: SystemInfo): string {
  const counts = Object.entries(i.vms ?? {})
    .filter(([, n]) => (n ?? 0) > 0)
    .map(([s, n]) => `${n} ${s}`);
  const head = keyValues([
    ['Host', i.hostId],
    ['Version', i.version],
    ['CPUs', String(i.cpus)],
    ['Memory', mib(i.memoryMiB)],
    [
      'Allocated',
      i.allocated
        ? `${i.allocated.vcpus}${i.limits ? `/${i.limits.vcpus}` : ''} vCPUs, ${mib(i.allocated.memoryMiB)}${i.limits ? ` of ${mib(i.limits.memoryMiB)}` : ''}`
        : undefined,
    ],
    ['Max VMs', i.limits ? String(i.limits.maxVms) : undefined],
    ['VMs', counts.length ? counts.join(', ') : 'none'],
    ['Images', i.images?.length ? i.images.join(', ') : 'none (build one: `mvirt image build`)'],
  ]);
  const backends = (i.backends ?? []).map((b) => [
    b.name,
    b.available ? 'yes' : 'no',
    b.accel ?? '-',
    confinedText(b.confinement),
    b.reason ?? '',
  ]);
  return backends.length
    ? `${head}\n${table(['backend', 'available', 'accel', 'confined', 'note'], backends)}`
    : head;
}

export const infoCommands: Command[] = [
  {
    name: 'info',
    summary: 'Show the host: capacity, allocation, hypervisor backends, VMs by state, images.',
    examples: [
      'mvirt info',
      'mvirt info --json',
      'mvirt info --fleet',
      'MVIRT_BROKER=/var/lib/mvirt/mvirt.sock mvirt info',
    ],
    options: {
      fleet: {
        type: 'boolean',
        help: 'every host on the broker instead (a fleet: docs/fleet.md): totals of the online hosts, then one line per host',
      },
    },
    run: async (ctx, p) => {
      if (p.values.fleet === true) {
        const hosts = await ctx.hosts();
        ctx.out(
          ctx.globals.json
            ? json({ totals: fleetTotals(hosts), hosts })
            : fleetText(hosts, ctx.io.now()),
        );
        return EXIT.OK;
      }
      const c = await ctx.client();
      const i = await c.call('system.info');
      ctx.out(ctx.globals.json ? json(i) : infoText(i));
      return EXIT.OK;
    },
  },
];

/** `own uid, cgroup v1, seccomp`, or what is missing and why. */
function confinedText(c: NonNullable<SystemInfo['backends']>[number]['confinement']): string {
  if (!c) return '-';
  const parts = [
    c.user ? 'own uid' : 'as mvirtd',
    c.cgroup ? `cgroup ${c.cgroup}` : 'no cgroup',
    c.seccomp ? 'seccomp' : 'no seccomp',
  ];
  return c.reasons.length ? `${parts.join(', ')} (${c.reasons.join('; ')})` : parts.join(', ');
}
