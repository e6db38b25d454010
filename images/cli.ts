/**
 * `mvirt image build [RECIPE] [--data-dir D] [--no-cache]`. The mvirt CLI
 * routes `mvirt image ...` here; it is also runnable on its own:
 *   node --import tsx images/cli.ts build [RECIPE] ...
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { MvirtError } from '../protocol/errors.js';
import { buildImage } from './build.js';
import { DEFAULT_DATA_DIR, DEFAULT_RECIPE } from './paths.js';

const USAGE = `usage: mvirt image build [RECIPE] [--data-dir D] [--no-cache]
  RECIPE      image recipe (JSON), default ${DEFAULT_RECIPE}
  --data-dir  mvirt data folder, default ${DEFAULT_DATA_DIR} (image goes to <D>/images/<name>/)
  --no-cache  rebuild from scratch (downloads stay cached in $MVIRT_CACHE_DIR or ~/.cache/mvirt)
`;

export async function imageCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    process.stdout.write(USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== 'build') {
    process.stderr.write(`mvirt image: unknown command "${sub}"\n${USAGE}`);
    return 2;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        'data-dir': { type: 'string' },
        'no-cache': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`mvirt image build: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (parsed.positionals.length > 1) {
    process.stderr.write(`mvirt image build: one recipe at a time\n${USAGE}`);
    return 2;
  }
  try {
    const r = await buildImage({
      recipe: parsed.positionals[0] ?? DEFAULT_RECIPE,
      dataDir: parsed.values['data-dir'] ?? DEFAULT_DATA_DIR,
      noCache: parsed.values['no-cache'],
    });
    process.stdout.write(`${r.dir}\n`);
    return 0;
  } catch (err) {
    if (err instanceof MvirtError) {
      process.stderr.write(`mvirt image build: ${err.code}: ${err.message}\n`);
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
