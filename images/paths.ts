/** Where things live: the project checkout, the download/output cache, the data dir. */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The mvirt checkout: the nearest folder above this module with a
 * package.json (this file is images/paths.ts in a checkout; bundled, it is
 * a chunk of the CLI in dist/cli/). Relative recipe paths resolve against it.
 */
export const PROJECT_ROOT = projectRoot(path.dirname(fileURLToPath(import.meta.url)));

function projectRoot(from: string): string {
  for (let dir = path.dirname(from); ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) return path.dirname(from);
  }
}

export const DEFAULT_RECIPE = path.join(PROJECT_ROOT, 'images/recipes/default.json');
export const DEFAULT_DATA_DIR = '/var/lib/mvirt';
export const INITRAMFS_DIR = path.join(PROJECT_ROOT, 'initramfs');
export const KERNEL_CONFIG_DIR = path.join(PROJECT_ROOT, 'kernel-config');
export const PINS_FILE = path.join(PROJECT_ROOT, 'images/pins.json');

/**
 * Downloads and cached outputs live outside the data dir: they are
 * reproducible from the network, the data dir holds state worth a backup.
 */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.MVIRT_CACHE_DIR ?? path.join(homedir(), '.cache', 'mvirt');
}
