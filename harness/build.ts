/**
 * What tests and benches run that must be built first: the host bundles
 * (dist/), the guest agent executable, and the default µOS image. Each is
 * cached by its own builder, so asking again costs seconds (measured here:
 * `node scripts/build.mjs host` 6 s, `agent` 5 s when up to date, an image
 * build from a warm ~/.cache/mvirt a copy).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { buildImage } from '../images/build.js';
import { REPO } from './paths.js';

/** The built programs (dist/mvirtd.js, dist/mvirt.cjs with dist/cli.cjs, and the dashboard beside them). */
export const DIST = {
  mvirtd: path.join(REPO, 'dist/mvirtd.js'),
  mvirt: path.join(REPO, 'dist/mvirt.cjs'),
  cli: path.join(REPO, 'dist/cli.cjs'),
  dashboard: path.join(REPO, 'dist/dashboard/index.html'),
};

const built = new Set<string>();

function buildScript(part: 'host' | 'agent'): void {
  if (built.has(part)) return;
  const r = spawnSync(process.execPath, ['scripts/build.mjs', part], {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`\`node scripts/build.mjs ${part}\` failed`);
  built.add(part);
}

/**
 * Build the host programs: once per process when `always` (a bench measures
 * the current source), else only when a direct test run finds them missing.
 */
export function ensureBuilt(o: { always?: boolean } = {}): void {
  if (!o.always && Object.values(DIST).every((f) => existsSync(f))) return;
  buildScript('host');
}

/** Where benches keep what they build (git-ignored). */
export const BENCH_DATA = path.join(REPO, 'bench-output/data');

const imageDirs = new Map<string, Promise<string>>();

/**
 * An images folder holding a current image of `recipe` (default: the default
 * µOS): the agent and the image built (both cached) into `dataDir`, as `npm
 * test` does for test-output/data, so a bench needs nothing another command
 * left behind. MVIRT_IMAGES_DIR, when set, is used for the default image instead.
 */
export function imagesDir(o: { recipe?: string; dataDir?: string } = {}): Promise<string> {
  const given = process.env.MVIRT_IMAGES_DIR;
  if (given && !o.recipe) {
    if (!existsSync(path.join(given, 'default', 'manifest.json')))
      return Promise.reject(
        new Error(`MVIRT_IMAGES_DIR=${given} has no default image: unset it to build one`),
      );
    return Promise.resolve(given);
  }
  const dataDir = o.dataDir ?? BENCH_DATA;
  const key = `${o.recipe ?? 'default'}\0${dataDir}`;
  let p = imageDirs.get(key);
  if (!p) {
    p = (async () => {
      buildScript('agent');
      const r = await buildImage({
        dataDir,
        ...(o.recipe ? { recipe: path.resolve(REPO, o.recipe) } : {}),
        log: (s) => process.stderr.write(`image: ${s}\n`),
      });
      return path.dirname(r.dir);
    })();
    imageDirs.set(key, p);
  }
  return p;
}
