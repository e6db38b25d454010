/** Where things live: the project checkout, the download/output cache, the data dir. */
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The mvirt checkout (this file is images/paths.ts). Relative recipe paths resolve against it. */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

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
