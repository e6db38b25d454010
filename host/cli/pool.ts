/**
 * `mvirt pool …`: pools keep ready VMs of an image so that a job does not wait
 * for a boot; with --snapshot or --from-snapshot the VMs are forks of a
 * snapshot (they resume, no boot).
 */
import type { MvirtClient } from '../../protocol/client.js';
import type { ParamsOf, PoolRecord } from '../../protocol/rpc.js';
import { UsageError, integer, type Parsed } from './args.js';
import { str, type Command } from './command.js';
import { EXIT } from './exit.js';
import { inert } from '../../protocol/inert.js';
import { byName, json, keyValues, mib, relativeTime, table } from './output.js';
import { snapshotRef, type SnapshotNames } from './vm-view.js';

const vmCounts = (p: PoolRecord): string =>
  `${p.vms?.ready ?? 0} ready, ${p.vms?.starting ?? 0} starting, ${p.vms?.busy ?? 0} busy`;

/** Where a pool's VMs come from: undefined when they boot. */
const madeFrom = (p: PoolRecord, names: SnapshotNames): string | undefined =>
  p.fromSnapshot !== undefined
    ? `forks of snapshot ${snapshotRef(p.fromSnapshot, names)}`
    : p.snapshot
      ? "forks of mvirtd's template snapshot of its image and size"
      : undefined;

export function poolLine(p: PoolRecord, names: SnapshotNames = new Map()): string {
  const from = madeFrom(p, names);
  return inert(
    `pool ${p.name}: ${p.min}–${p.max} VMs of ${p.image} (${p.vcpus} vCPU, ${mib(p.memoryMiB)})${from ? `, ${from}` : ''}; now ${vmCounts(p)}${p.problem ? `\nproblem: ${p.problem}` : ''}`,
  ).concat('\n');
}

/** The names of the snapshots these pools fork (one snapshot.list; empty when none does or on error). */
export async function poolSnapshotNames(
  c: MvirtClient,
  pools: PoolRecord[],
): Promise<SnapshotNames> {
  if (!pools.some((p) => p.fromSnapshot !== undefined)) return new Map();
  try {
    const r = await c.call('snapshot.list', {});
    return new Map(r.snapshots.map((s) => [s.id, s.name]));
  } catch {
    return new Map();
  }
}

/** `pool ls`; a FROM column (`template`, or the snapshot) only when some pool forks one. */
export function poolTable(pools: PoolRecord[], names: SnapshotNames = new Map()): string {
  const from = pools.some((p) => p.snapshot || p.fromSnapshot !== undefined);
  return table(
    [
      'name',
      'image',
      'min',
      'max',
      'vcpus',
      'memory',
      'ready',
      'starting',
      'busy',
      ...(from ? ['from'] : []),
    ],
    pools.map((p) => [
      p.name,
      p.image,
      String(p.min),
      String(p.max),
      String(p.vcpus),
      mib(p.memoryMiB),
      String(p.vms?.ready ?? 0),
      String(p.vms?.starting ?? 0),
      String(p.vms?.busy ?? 0),
      ...(from
        ? [
            p.fromSnapshot !== undefined
              ? (names.get(p.fromSnapshot) ?? p.fromSnapshot)
              : p.snapshot
                ? 'template'
                : '-',
          ]
        : []),
    ]),
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
}

export function poolDetails(p: PoolRecord, now: number, names: SnapshotNames = new Map()): string {
  const when = (t: string | undefined): string | undefined =>
    t ? `${relativeTime(t, now)} (${t})` : undefined;
  return keyValues([
    ['Name', p.name],
    ['Image', p.image],
    ['Min', String(p.min)],
    ['Max', String(p.max)],
    ['vCPUs', String(p.vcpus)],
    ['Memory', mib(p.memoryMiB)],
    ['Made as', madeFrom(p, names) ?? 'booted'],
    ['VMs', vmCounts(p)],
    ['Problem', p.problem],
    ['Created', when(p.createdAt)],
    ['Updated', when(p.updatedAt)],
  ]);
}

export const poolCommands: Command[] = [
  {
    name: 'pool set',
    summary: 'Create a pool, or change one: keep at least --min ready VMs of an image.',
    args: ['NAME'],
    description:
      'The daemon boots VMs until --min of them are ready, and lends each to one job at a\n' +
      'time (`mvirt run --pool NAME -- …`); --max bounds how many the pool may hold in all.\n' +
      "With --snapshot the VMs are forks of mvirtd's template snapshot of the image and\n" +
      'size (taken once of the first VM, fresh and ready; again after the image is\n' +
      'rebuilt); with --from-snapshot forks of that VM snapshot, whose image and size\n' +
      'the pool takes. Left out, both stay as they were; --boot makes the VMs boot again.',
    options: {
      min: { type: 'string', value: 'N', help: 'ready VMs to keep (required; 0 keeps none)' },
      max: {
        type: 'string',
        value: 'M',
        help: 'most VMs the pool may have in all (default: the daemon decides)',
      },
      image: {
        type: 'string',
        value: 'IMAGE',
        help: 'image of its VMs (default: the host default)',
      },
      vcpus: { type: 'string', value: 'N', help: 'vCPUs per VM' },
      memory: { type: 'string', value: 'MiB', help: 'memory per VM in MiB' },
      snapshot: {
        type: 'boolean',
        help: "VMs are forks of mvirtd's template snapshot of the image and size (no boot)",
      },
      'from-snapshot': {
        type: 'string',
        value: 'SNAPSHOT',
        help: 'VMs are forks of this VM snapshot (id or name); its image and size are the pool’s',
      },
      boot: { type: 'boolean', help: 'VMs boot (undoes --snapshot and --from-snapshot)' },
    },
    examples: [
      'mvirt pool set builders --min 2',
      'mvirt pool set builders --image default --min 1 --max 4 --vcpus 2 --memory 512',
      'mvirt pool set builders --min 4 --snapshot',
      'mvirt pool set warm --min 2 --from-snapshot base',
      'mvirt pool set builders --min 0',
    ],
    run: async (ctx, p) => {
      const [name] = p.positionals;
      const min = integer(str(p, 'min'), '--min', 0);
      if (min === undefined)
        throw new UsageError('missing --min N (the number of ready VMs to keep)', 'pool set');
      const max = integer(str(p, 'max'), '--max');
      if (max !== undefined && max < min)
        throw new UsageError(`--max (${max}) must be at least --min (${min})`, 'pool set');
      const image = str(p, 'image');
      const vcpus = integer(str(p, 'vcpus'), '--vcpus');
      const memoryMiB = integer(str(p, 'memory'), '--memory');
      const params: ParamsOf<'pool.set'> = {
        name: name!,
        min,
        ...(max !== undefined ? { max } : {}),
        ...(image !== undefined ? { image } : {}),
        ...(vcpus !== undefined ? { vcpus } : {}),
        ...(memoryMiB !== undefined ? { memoryMiB } : {}),
        ...madeAs(p),
      };
      const c = await ctx.client();
      const r = await c.call('pool.set', params);
      ctx.out(ctx.globals.json ? json(r) : poolLine(r, await poolSnapshotNames(c, [r])));
      return EXIT.OK;
    },
  },
  {
    name: 'pool ls',
    summary: 'List pools and their VMs.',
    examples: ['mvirt pool ls', 'mvirt pool ls --json'],
    run: async (ctx) => {
      const c = await ctx.client();
      const r = await c.call('pool.list', {});
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.pools.length === 0)
        ctx.out('no pools yet: create one with `mvirt pool set NAME --min N`\n');
      else
        ctx.out(
          poolTable(
            [...r.pools].sort((a, b) => byName(a.name, b.name)),
            await poolSnapshotNames(c, r.pools),
          ),
        );
      return EXIT.OK;
    },
  },
  {
    name: 'pool get',
    summary: 'Show one pool.',
    args: ['NAME'],
    examples: ['mvirt pool get builders', 'mvirt pool get builders --json'],
    run: async (ctx, p) => {
      const [name] = p.positionals;
      const c = await ctx.client();
      const r = await c.call('pool.get', { name: name! });
      ctx.out(
        ctx.globals.json ? json(r) : poolDetails(r, ctx.io.now(), await poolSnapshotNames(c, [r])),
      );
      return EXIT.OK;
    },
  },
  {
    name: 'pool rm',
    summary: 'Delete a pool.',
    args: ['NAME'],
    examples: ['mvirt pool rm builders'],
    run: async (ctx, p) => {
      const [name] = p.positionals;
      const c = await ctx.client();
      await c.call('pool.delete', { name: name! });
      ctx.out(ctx.globals.json ? json({}) : `deleted pool ${name!}\n`);
      return EXIT.OK;
    },
  },
];

/** --snapshot, --from-snapshot, --boot: at most one; a snapshot's image and size are not given too. */
function madeAs(p: Parsed): Pick<ParamsOf<'pool.set'>, 'snapshot' | 'fromSnapshot'> {
  const from = str(p, 'from-snapshot');
  const chosen = [
    ...(p.values.snapshot === true ? ['--snapshot'] : []),
    ...(from !== undefined ? ['--from-snapshot'] : []),
    ...(p.values.boot === true ? ['--boot'] : []),
  ];
  if (chosen.length > 1)
    throw new UsageError(
      `${chosen.join(' and ')} cannot go together: the pool's VMs are forks of the template (--snapshot), forks of one snapshot (--from-snapshot) or booted (--boot)`,
      'pool set',
    );
  if (from !== undefined) {
    const clash = ['image', 'vcpus', 'memory'].filter((k) => p.values[k] !== undefined);
    if (clash.length > 0)
      throw new UsageError(
        `${clash.map((k) => `--${k}`).join(', ')} cannot go with --from-snapshot: the pool takes the snapshot's image and size (\`mvirt snapshot get ${from}\` shows them)`,
        'pool set',
      );
    return { fromSnapshot: from };
  }
  if (p.values.snapshot === true) return { snapshot: true };
  if (p.values.boot === true) return { snapshot: false };
  return {};
}
