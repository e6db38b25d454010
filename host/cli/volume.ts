/** `mvirt volume …`: disks that outlive VMs, made with qemu-img by mvirtd. */
import type { ParamsOf, VolumeRecord, VolumeSnapshot } from '../../protocol/rpc.js';
import { UsageError } from './args.js';
import { str, type Command } from './command.js';
import { EXIT } from './exit.js';
import { bytes as size, json, keyValues, relativeTime, table } from './output.js';

const attached = (v: VolumeRecord): string =>
  v.attachedTo.length === 0
    ? '-'
    : v.attachedTo.map((a) => `${a.vm}${a.readOnly ? ':ro' : ''}`).join(', ');

export function volumeLine(v: VolumeRecord): string {
  return `volume ${v.name} (${v.id}): ${size(v.sizeBytes)} ${v.format}, ${size(v.usedBytes)} used, ${v.state}${v.backing ? `, over ${v.backing}` : ''}\n`;
}

export function volumeTable(vs: VolumeRecord[]): string {
  return table(
    ['name', 'id', 'format', 'size', 'used', 'state', 'attached to'],
    vs.map((v) => [
      v.name,
      v.id,
      v.format,
      size(v.sizeBytes),
      size(v.usedBytes),
      v.state,
      attached(v),
    ]),
    ['left', 'left', 'left', 'right', 'right', 'left', 'left'],
  );
}

function volumeDetails(v: VolumeRecord, now: number): string {
  const when = (t: string): string => `${relativeTime(t, now)} (${t})`;
  return keyValues([
    ['Name', v.name],
    ['ID', v.id],
    ['State', v.state],
    ['Format', v.format],
    ['Size', `${size(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['Used', `${size(v.usedBytes)} (${v.usedBytes} bytes)`],
    ['Template', v.backing ?? undefined],
    ['Attached to', attached(v)],
    ['Created', when(v.createdAt)],
    ['Updated', when(v.updatedAt)],
  ]);
}

export function snapshotTable(ss: VolumeSnapshot[]): string {
  return table(
    ['name', 'id', 'vm state', 'created'],
    ss.map((s) => [s.name, s.id, size(s.vmStateBytes), s.createdAt]),
    ['left', 'right', 'right', 'left'],
  );
}

/** `--size 10G`, `512M`, `512` (MiB) → MiB. */
export function parseSizeMiB(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  const m = /^(\d+)([MGT]i?B?)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${flag} ${s}: expected a size such as 512M, 10G or 1T`);
  const unit = (m[2] ?? 'M')[0]!.toUpperCase();
  const n = Number(m[1]) * (unit === 'G' ? 1024 : unit === 'T' ? 1024 * 1024 : 1);
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} ${s}: too small or large`);
  return n;
}

export const volumeCommands: Command[] = [
  {
    name: 'volume create',
    summary: 'Create a volume (a raw or qcow2 file on the host), or import one.',
    args: ['NAME'],
    description:
      'The file is made by mvirtd under its data folder; attach the volume with\n' +
      '`mvirt vm create NAME --disk VOLUME[:ro]`. --import takes a file name from the\n' +
      "daemon's --volume-import-dir (never a path).",
    options: {
      size: { type: 'string', value: 'SIZE', help: 'size: 512M, 10G, 1T (MiB without a unit)' },
      format: { type: 'string', value: 'raw|qcow2', help: 'file format (default raw)' },
      import: { type: 'string', value: 'FILE', help: 'copy FILE from the import folder' },
    },
    examples: [
      'mvirt volume create data --size 10G',
      'mvirt volume create base --size 2G --format qcow2',
      'mvirt volume create disk1 --import disk1.qcow2',
    ],
    run: async (ctx, p) => {
      const [name] = p.positionals;
      const sizeMiB = parseSizeMiB(str(p, 'size'), '--size');
      const importFrom = str(p, 'import');
      if ((sizeMiB === undefined) === (importFrom === undefined))
        throw new UsageError('give exactly one of --size and --import', 'volume create');
      const format = str(p, 'format');
      if (format !== undefined && format !== 'raw' && format !== 'qcow2')
        throw new UsageError(`--format ${format}: raw or qcow2`, 'volume create');
      const params: ParamsOf<'volume.create'> = {
        name: name!,
        ...(sizeMiB !== undefined ? { sizeMiB } : {}),
        ...(importFrom !== undefined ? { importFrom } : {}),
        ...(format !== undefined ? { format } : {}),
      };
      const c = await ctx.client();
      const v = await c.call('volume.create', params);
      ctx.out(ctx.globals.json ? json(v) : `created ${volumeLine(v)}`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume ls',
    summary: 'List volumes.',
    examples: ['mvirt volume ls', 'mvirt volume ls --json'],
    run: async (ctx) => {
      const c = await ctx.client();
      const r = await c.call('volume.list', {});
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.volumes.length === 0)
        ctx.out('no volumes yet: create one with `mvirt volume create NAME --size 1G`\n');
      else ctx.out(volumeTable(r.volumes));
      return EXIT.OK;
    },
  },
  {
    name: 'volume get',
    summary: 'Show one volume, its usage measured now.',
    args: ['VOLUME'],
    examples: ['mvirt volume get data'],
    run: async (ctx, p) => {
      const c = await ctx.client();
      const v = await c.call('volume.get', { volume: p.positionals[0]! });
      ctx.out(ctx.globals.json ? json(v) : volumeDetails(v, ctx.io.now()));
      return EXIT.OK;
    },
  },
  {
    name: 'volume rm',
    summary: 'Delete a volume and its file (refused while attached or cloned from).',
    args: ['VOLUME'],
    examples: ['mvirt volume rm data'],
    run: async (ctx, p) => {
      const c = await ctx.client();
      await c.call('volume.delete', { volume: p.positionals[0]! });
      ctx.out(ctx.globals.json ? json({}) : `deleted volume ${p.positionals[0]!}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume resize',
    summary: 'Grow a volume (the guest sees it at its next boot).',
    args: ['VOLUME', 'SIZE'],
    examples: ['mvirt volume resize data 20G'],
    run: async (ctx, p) => {
      const [volume, sz] = p.positionals;
      const sizeMiB = parseSizeMiB(sz, 'SIZE')!;
      const c = await ctx.client();
      const v = await c.call('volume.resize', { volume: volume!, sizeMiB });
      ctx.out(ctx.globals.json ? json(v) : `resized ${volumeLine(v)}`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume clone',
    summary: 'A new volume from a template: copy-on-write overlay (default) or full copy.',
    args: ['VOLUME', 'NAME'],
    options: {
      full: { type: 'boolean', help: 'an independent full copy instead of a qcow2 overlay' },
    },
    examples: ['mvirt volume clone base web-1-root', 'mvirt volume clone data data-copy --full'],
    run: async (ctx, p) => {
      const [volume, name] = p.positionals;
      const c = await ctx.client();
      const v = await c.call('volume.clone', {
        volume: volume!,
        name: name!,
        mode: p.values.full === true ? 'full' : 'overlay',
      });
      ctx.out(ctx.globals.json ? json(v) : `created ${volumeLine(v)}`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume snapshot',
    summary: 'Snapshot a qcow2 volume (live when a running VM has it).',
    args: ['VOLUME', 'NAME'],
    description:
      "A qcow2 internal snapshot, kept inside the volume's file. While a running VM\n" +
      'has the volume, its hypervisor takes the snapshot and the guest keeps running\n' +
      '(disk-only: the point a power cut would leave). Raw volumes have no snapshots.',
    examples: ['mvirt volume snapshot data before-upgrade'],
    run: async (ctx, p) => {
      const [volume, name] = p.positionals;
      const c = await ctx.client();
      const s = await c.call('volume.snapshot', { volume: volume!, name: name! });
      ctx.out(ctx.globals.json ? json(s) : `snapshot ${s.name} of volume ${volume!} taken\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume snapshots',
    summary: "List a volume's snapshots, oldest first.",
    args: ['VOLUME'],
    examples: ['mvirt volume snapshots data', 'mvirt volume snapshots data --json'],
    run: async (ctx, p) => {
      const volume = p.positionals[0]!;
      const c = await ctx.client();
      const r = await c.call('volume.snapshots', { volume });
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.snapshots.length === 0)
        ctx.out(
          `volume ${volume} has no snapshots: take one with \`mvirt volume snapshot ${volume} NAME\`\n`,
        );
      else ctx.out(snapshotTable(r.snapshots));
      return EXIT.OK;
    },
  },
  {
    name: 'volume restore',
    summary: "Bring a volume's data back to a snapshot (the VM must be stopped).",
    args: ['VOLUME', 'SNAPSHOT'],
    examples: ['mvirt volume restore data before-upgrade'],
    run: async (ctx, p) => {
      const [volume, snapshot] = p.positionals;
      const c = await ctx.client();
      const v = await c.call('volume.restore', { volume: volume!, snapshot: snapshot! });
      ctx.out(ctx.globals.json ? json(v) : `restored to ${snapshot!}: ${volumeLine(v)}`);
      return EXIT.OK;
    },
  },
  {
    name: 'volume rmsnap',
    summary: 'Delete one snapshot of a volume.',
    args: ['VOLUME', 'SNAPSHOT'],
    examples: ['mvirt volume rmsnap data before-upgrade'],
    run: async (ctx, p) => {
      const [volume, snapshot] = p.positionals;
      const c = await ctx.client();
      await c.call('volume.deleteSnapshot', { volume: volume!, snapshot: snapshot! });
      ctx.out(ctx.globals.json ? json({}) : `deleted snapshot ${snapshot!} of volume ${volume!}\n`);
      return EXIT.OK;
    },
  },
];
