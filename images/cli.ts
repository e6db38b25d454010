/**
 * `mvirt image build [RECIPE] [--data-dir D] [--no-cache]`. The mvirt CLI
 * routes `mvirt image ...` here; it is also runnable on its own:
 *   node --import tsx images/cli.ts build [RECIPE] ...
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { fileURLToPath } from 'node:url';
import { MvirtError } from '../protocol/errors.js';
import { buildImage } from './build.js';
import { importImage } from './oci/import.js';
import { DEFAULT_DATA_DIR, DEFAULT_RECIPE } from './paths.js';

const USAGE = `usage: mvirt image build [RECIPE] [--data-dir D] [--no-cache]
       mvirt image import SOURCE --name N [--data-dir D] [--base B] [--max-bytes N] [--max-entries N]
  RECIPE      image recipe (JSON), default ${DEFAULT_RECIPE}
  SOURCE      a container image: an OCI image layout (folder or tar) or a \`docker save\` archive
  --name      the imported image's name
  --base      the µOS image it boots with (default: default)
  --data-dir  mvirt data folder, default ${DEFAULT_DATA_DIR} (image goes to <D>/images/<name>/)
  --no-cache  rebuild from scratch (downloads stay cached in $MVIRT_CACHE_DIR or ~/.cache/mvirt)
  --max-bytes, --max-entries  import limits (default 16 GiB of files, 1000000 entries)
`;

export async function imageCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    process.stdout.write(USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub === 'import') return importCommand(rest);
  if (sub !== 'build') {
    process.stderr.write(`mvirt image: unknown command "${sub}"\n${USAGE}`);
    return 2;
  }
  const parsed = parse('build', rest, {
    'data-dir': { type: 'string' },
    'no-cache': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (!parsed) return 2;
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (parsed.positionals.length > 1) {
    process.stderr.write(`mvirt image build: one recipe at a time\n${USAGE}`);
    return 2;
  }
  return printDir('build', () =>
    buildImage({
      recipe: parsed.positionals[0] ?? DEFAULT_RECIPE,
      dataDir: parsed.values['data-dir'] ?? DEFAULT_DATA_DIR,
      noCache: parsed.values['no-cache'],
    }),
  );
}

async function importCommand(rest: string[]): Promise<number> {
  const parsed = parse('import', rest, {
    name: { type: 'string' },
    base: { type: 'string' },
    'data-dir': { type: 'string' },
    'max-bytes': { type: 'string' },
    'max-entries': { type: 'string' },
  });
  if (!parsed) return 2;
  const v = parsed.values;
  const count = (s: string | undefined): number | undefined =>
    s === undefined || !/^\d+$/.test(s) ? undefined : Number(s);
  if (parsed.positionals.length !== 1 || v.name === undefined) {
    process.stderr.write(`mvirt image import: one SOURCE and --name are needed\n${USAGE}`);
    return 2;
  }
  for (const k of ['max-bytes', 'max-entries'] as const)
    if (v[k] !== undefined && count(v[k]) === undefined) {
      process.stderr.write(`mvirt image import: --${k} takes a whole number\n`);
      return 2;
    }
  return printDir('import', () =>
    importImage({
      source: parsed.positionals[0]!,
      name: v.name!,
      base: v.base,
      dataDir: v['data-dir'] ?? DEFAULT_DATA_DIR,
      limits: {
        ...(v['max-bytes'] === undefined ? {} : { maxBytes: count(v['max-bytes'])! }),
        ...(v['max-entries'] === undefined ? {} : { maxEntries: count(v['max-entries'])! }),
      },
    }),
  );
}

/** A subcommand's arguments; null (the usage printed) when they do not parse. */
function parse<const O extends NonNullable<ParseArgsConfig['options']>>(
  sub: string,
  args: string[],
  options: O,
) {
  try {
    return parseArgs<{ args: string[]; allowPositionals: true; options: O }>({
      args,
      allowPositionals: true,
      options,
    });
  } catch (err) {
    process.stderr.write(`mvirt image ${sub}: ${(err as Error).message}\n${USAGE}`);
    return null;
  }
}

/** Run `work`, print the folder it made; a typed error is printed with its code (exit 1). */
async function printDir(sub: string, work: () => Promise<{ dir: string }>): Promise<number> {
  try {
    const r = await work();
    process.stdout.write(`${r.dir}\n`);
    return 0;
  } catch (err) {
    if (err instanceof MvirtError) {
      process.stderr.write(`mvirt image ${sub}: ${err.code}: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // Not a top-level await: this module is also part of the CLI's CommonJS bundle.
  void imageCommand(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
