/**
 * Run a CommonJS bundle with V8's code cache: the compiled code of a run is
 * kept in a file and handed to V8 by the next run, which then neither parses
 * nor compiles what it finds there. Node 20 offers this for scripts only
 * (vm.Script cachedData; module.enableCompileCache, which also covers ES
 * modules, came with Node 22.1), which is why the CLI is one CommonJS bundle
 * (scripts/build.mjs).
 *
 * Safety: V8 checks that a cache belongs to this source, V8 version and flags
 * (a stale cache is rejected), but in Node 20 not its bytes: a cache with
 * flipped bytes was accepted and the CLI crashed in V8's deserializer or
 * misbehaved. --verify-snapshot-checksum, set before any cache is made or
 * used, makes V8 checksum code caches too (it then rejected every corrupted
 * cache tried). Where that flag is not known to exist (another V8 major) there
 * is no cache. A cache file must also be ours: owned by this user, writable by
 * no one else, since it is code that runs.
 *
 * Anything that goes wrong (no cache dir, a read-only home, a full disk, a
 * rejected cache) costs the cache, never the run: the bundle is compiled as
 * without one, and the cache written anew after the run.
 */
import {
  closeSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { isAscii } from 'node:buffer';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';

/** What became of the cache in this run. */
export type CacheUse = 'hit' | 'rejected' | 'missing' | 'off';

/** V8 majors whose --verify-snapshot-checksum covers code caches: Node 18 to 24. */
const CHECKSUM_V8 = { min: 10, max: 13 };

/** May this process use a code cache (is V8's checksum flag known here)? */
export function cacheSupported(v8Version = process.versions.v8): boolean {
  const major = Number(v8Version.split('.')[0]);
  return major >= CHECKSUM_V8.min && major <= CHECKSUM_V8.max;
}

let checksumsOn = false;

/** A cache file's bytes, or undefined when there is none we may trust. */
function readCache(file: string): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const st = fstatSync(fd);
    const mine = process.getuid === undefined || st.uid === process.getuid();
    if (!st.isFile() || !mine || (st.mode & 0o022) !== 0) return undefined;
    return readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * A script's text: the CLI bundle is ASCII (scripts/build.mjs), which decodes
 * as Latin-1 in 1.2 ms instead of 3 ms as UTF-8 (1.1 MB, 2-core dev machine).
 */
function readSource(file: string): string {
  const bytes = readFileSync(file);
  return isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8');
}

/** Write atomically (a reader sees the old file or the new one), readable by this user only. */
function writeCache(file: string, data: Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, data, { mode: 0o600 });
    renameSync(tmp, file);
  } catch {
    rmSync(tmp, { force: true });
  }
}

/**
 * What a cache file starts with: its bundle's `tag` (the build's sha256 of
 * it, start.ts), padded to 128 bytes. V8 checks a cache against the length of
 * its source, not its text: a rebuild of the same length in the same file
 * (its inode kept, so the same cache file) ran the old build's compiled code
 * (a bundle whose `+ 42` became `+ 43` still gave 42, Node 20).
 */
function cacheHead(tag: string): Buffer {
  return Buffer.from(`mvirt code cache ${tag}`.slice(0, 127).padEnd(127) + '\n', 'latin1');
}

/**
 * Run `file` (CommonJS) as Node would require it, with the code cache in
 * `cacheFile` (null: none), made for the bundle `tag` names. Returns its
 * module.exports and what became of the cache; a cache that was missing or
 * rejected is written when the process exits, so that it holds everything
 * this run compiled.
 */
export function runCached(
  file: string,
  cacheFile: string | null,
  tag = '',
): { exports: unknown; cache: CacheUse } {
  const require = createRequire(file);
  if (cacheFile === null || !cacheSupported()) return { exports: require(file), cache: 'off' };
  if (!checksumsOn) {
    v8.setFlagsFromString('--verify-snapshot-checksum');
    checksumsOn = true;
  }
  const head = cacheHead(tag);
  const stored = readCache(cacheFile);
  const cachedData =
    stored !== undefined &&
    stored.length > head.length &&
    head.equals(stored.subarray(0, head.length))
      ? stored.subarray(head.length)
      : undefined;
  // Node's own CommonJS wrapper, so the bundle sees what require() would give it.
  const source = `(function (exports, require, module, __filename, __dirname) { ${readSource(file)}\n})`;
  const script = new vm.Script(source, {
    filename: file,
    ...(cachedData ? { cachedData } : {}),
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const cache: CacheUse =
    stored === undefined
      ? 'missing'
      : cachedData === undefined || script.cachedDataRejected
        ? 'rejected'
        : 'hit';
  if (cache !== 'hit')
    process.once('exit', () => {
      try {
        writeCache(cacheFile, Buffer.concat([head, script.createCachedData()]));
      } catch {
        // no cache this time
      }
    });
  const module = { exports: {} as unknown };
  const fn = script.runInThisContext() as (...args: unknown[]) => void;
  fn.call(module.exports, module.exports, require, module, file, path.dirname(file));
  return { exports: module.exports, cache };
}

/**
 * Where the CLI keeps its code cache: `$MVIRT_CACHE_DIR/code`, else
 * `${XDG_CACHE_HOME:-~/.cache}/mvirt/code`; null when there is no home. One
 * file per bundle (by its device and inode, which a rebuild keeps: the stale
 * cache is told by its tag, cacheHead, and rewritten in place), V8 version
 * and `part`: a cache holds what its first run compiled, and `mvirt vm ls`
 * compiles other code than `mvirt --help` (start.ts keys it by the command's
 * first word).
 */
export function cacheFileFor(
  bundle: string,
  env: Record<string, string | undefined>,
  home = os.homedir(),
  part = 'main',
): string | null {
  const base =
    env.MVIRT_CACHE_DIR ||
    (env.XDG_CACHE_HOME || home
      ? path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), 'mvirt')
      : null);
  if (!base) return null;
  try {
    const st = statSync(bundle);
    return path.join(base, 'code', `cli-${st.dev}-${st.ino}-v8-${process.versions.v8}-${part}.bin`);
  } catch {
    return null;
  }
}
