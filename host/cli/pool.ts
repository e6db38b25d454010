/** `mvirt pool …`: pools keep ready VMs of an image so that a job does not wait for a boot. */
import type { ParamsOf, PoolRecord } from '../../protocol/rpc.js';
import { UsageError, integer } from './args.js';
import { str, type Command } from './command.js';
import { EXIT } from './exit.js';
import { json, keyValues, mib, relativeTime, table } from './output.js';

const vmCounts = (p: PoolRecord): string =>
  `${p.vms?.ready ?? 0} ready, ${p.vms?.starting ?? 0} starting, ${p.vms?.busy ?? 0} busy`;

export function poolLine(p: PoolRecord): string {
  return `pool ${p.name}: ${p.min}–${p.max} VMs of ${p.image} (${p.vcpus} vCPU, ${mib(p.memoryMiB)}); now ${vmCounts(p)}\n`;
}

export function poolTable(pools: PoolRecord[]): string {
  return table(
    ['name', 'image', 'min', 'max', 'vcpus', 'memory', 'ready', 'starting', 'busy'],
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
    ]),
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
}

export function poolDetails(p: PoolRecord, now: number): string {
  const when = (t: string | undefined): string | undefined =>
    t ? `${relativeTime(t, now)} (${t})` : undefined;
  return keyValues([
    ['Name', p.name],
    ['Image', p.image],
    ['Min', String(p.min)],
    ['Max', String(p.max)],
    ['vCPUs', String(p.vcpus)],
    ['Memory', mib(p.memoryMiB)],
    ['VMs', vmCounts(p)],
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
      'time (`mvirt run --pool NAME -- …`); --max bounds how many the pool may hold in all.',
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
    },
    examples: [
      'mvirt pool set builders --min 2',
      'mvirt pool set builders --image default --min 1 --max 4 --vcpus 2 --memory 512',
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
      };
      const c = await ctx.client();
      const r = await c.call('pool.set', params);
      ctx.out(ctx.globals.json ? json(r) : poolLine(r));
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
      else ctx.out(poolTable([...r.pools].sort((a, b) => a.name.localeCompare(b.name))));
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
      ctx.out(ctx.globals.json ? json(r) : poolDetails(r, ctx.io.now()));
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
