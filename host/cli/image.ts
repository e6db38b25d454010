/**
 * `mvirt image …`: images over the API (image.* on mvirtd), and the local
 * builder and importer of images/ when `--data-dir` names a data folder
 * (no daemon needed; images/cli.ts parses those itself). Loaded lazily by
 * the dispatcher so the other commands do not pay for it.
 */
import { readFile } from 'node:fs/promises';
import type { EventRecord, ImageRecord } from '../../protocol/rpc.js';
import { UsageError } from './args.js';
import { str, type Command, type Context } from './command.js';
import { EXIT } from './exit.js';
import { bytes as size, json, keyValues, table } from './output.js';

/** `mvirt image build|import --data-dir D …`: the local builder, as before the API. */
export const isLocalImageCommand = (argv: readonly string[]): boolean =>
  (argv[0] === 'build' || argv[0] === 'import') &&
  argv.some((a) => a === '--data-dir' || a.startsWith('--data-dir='));

export const runImage = async (argv: string[]): Promise<number> =>
  (await import('../../images/cli.js')).imageCommand(argv);

/** Long work: a build downloads packages and compiles; its progress arrives as events. */
const LONG_MS = 60 * 60_000;

const used = (i: ImageRecord): string =>
  [...i.usedBy.vms, ...i.usedBy.pools.map((p) => `pool ${p}`)].join(', ') || '-';

export function imageTable(is: ImageRecord[]): string {
  return table(
    ['name', 'kind', 'size', 'kernel', 'built', 'base', 'used by'],
    is.map((i) => [i.name, i.kind, size(i.sizeBytes), i.kernel, i.builtAt, i.base ?? '-', used(i)]),
    ['left', 'left', 'right', 'left', 'left', 'left', 'left'],
  );
}

/** Print the image's progress events while `work` runs; one line each on stderr. */
async function withProgress<T>(ctx: Context, name: string, work: () => Promise<T>): Promise<T> {
  const c = await ctx.client();
  const object = `image:${name}`;
  const unsubscribe = await c.watchEvents((e: EventRecord) => {
    if (e.component === 'image' && e.level !== 'audit' && (e.objects ?? []).includes(object))
      ctx.err(`${e.message}\n`);
  });
  try {
    return await work();
  } finally {
    await unsubscribe();
  }
}

export const imageCommands: Command[] = [
  {
    name: 'image ls',
    summary: 'List the images of the host (built and imported), with what uses them.',
    examples: ['mvirt image ls', 'mvirt image ls --json'],
    run: async (ctx) => {
      const c = await ctx.client();
      const r = await c.call('image.list', {});
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.images.length === 0)
        ctx.out('no images yet: build one with `mvirt image build RECIPE`\n');
      else ctx.out(imageTable(r.images));
      return EXIT.OK;
    },
  },
  {
    name: 'image get',
    summary: 'Show one image; --json prints its manifest (every input and layer digest).',
    args: ['IMAGE'],
    examples: ['mvirt image get default', 'mvirt image get app --json'],
    run: async (ctx, p) => {
      const c = await ctx.client();
      const r = await c.call('image.get', { image: p.positionals[0]! });
      if (ctx.globals.json) ctx.out(json(r));
      else {
        const i = r.image;
        ctx.out(
          keyValues([
            ['Name', i.name],
            ['Kind', i.kind],
            ['Key', i.key],
            ['Size', `${size(i.sizeBytes)} (${i.sizeBytes} bytes)`],
            ['Kernel', i.kernel],
            ['Built', i.builtAt],
            ['Base', i.base],
            ['Root digest', i.rootDigest],
            ['Used by', used(i)],
          ]),
        );
      }
      return EXIT.OK;
    },
  },
  {
    name: 'image rm',
    summary: 'Delete an image (refused while a VM or pool uses it).',
    args: ['IMAGE'],
    examples: ['mvirt image rm app'],
    run: async (ctx, p) => {
      const c = await ctx.client();
      await c.call('image.delete', { image: p.positionals[0]! });
      ctx.out(ctx.globals.json ? json({}) : `deleted image ${p.positionals[0]!}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'image build',
    summary: 'Build a µOS image on the host from a recipe (progress as it goes).',
    args: ['RECIPE'],
    description:
      'The recipe (JSON, images/README.md) is sent to mvirtd, which builds the image\n' +
      'into its images folder; it may name no host files. With --data-dir D the\n' +
      'builder runs here instead, into D/images/ (`mvirt image build --data-dir D --help`).',
    options: {
      'no-cache': {
        type: 'boolean',
        help: 'rebuild from scratch instead of reusing cached outputs',
      },
    },
    examples: ['mvirt image build images/recipes/default.json'],
    run: async (ctx, p) => {
      const file = p.positionals[0]!;
      let recipe: Record<string, unknown>;
      try {
        recipe = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
      } catch (err) {
        throw new UsageError(`${file}: ${(err as Error).message}`, 'image build');
      }
      const name = typeof recipe.name === 'string' ? recipe.name : '';
      const c = await ctx.client();
      const r = await withProgress(ctx, name, () =>
        c.call(
          'image.build',
          { recipe, ...(p.values['no-cache'] === true ? { noCache: true } : {}) },
          { timeoutMs: LONG_MS },
        ),
      );
      ctx.out(ctx.globals.json ? json(r) : `built image ${r.name} (${size(r.sizeBytes)})\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'image import',
    summary: 'Import a container image (OCI layout tar or docker save) from the import folder.',
    args: ['FILE'],
    description:
      "FILE is a file name in the daemon's --image-import-dir (never a path). Jobs of\n" +
      'the image run in its files with its Env, WorkingDir and User; its Entrypoint\n' +
      "goes before a job's argv. With --data-dir D it is imported here instead\n" +
      '(FILE is then a path: an OCI layout folder or tar, or a docker save archive).',
    options: {
      name: { type: 'string', value: 'NAME', help: 'the image name (required)' },
      base: {
        type: 'string',
        value: 'IMAGE',
        help: 'the µOS image it boots with (default: default)',
      },
    },
    examples: [
      'mvirt image import app.tar --name app',
      'docker save app | ssh host "cat > /srv/import/app.tar"',
    ],
    run: async (ctx, p) => {
      const name = str(p, 'name');
      if (name === undefined) throw new UsageError('--name is required', 'image import');
      const base = str(p, 'base');
      const c = await ctx.client();
      const r = await withProgress(ctx, name, () =>
        c.call(
          'image.import',
          { file: p.positionals[0]!, name, ...(base !== undefined ? { base } : {}) },
          { timeoutMs: LONG_MS },
        ),
      );
      ctx.out(
        ctx.globals.json
          ? json(r)
          : `imported image ${r.name} (${size(r.sizeBytes)}, root ${r.rootDigest ?? '-'})\n`,
      );
      return EXIT.OK;
    },
  },
];
