/**
 * The kernel of an image: Debian's (the pinned deb, unpacked and cached with
 * modules.dep) or a custom one built from kernel-config/ (no modules).
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { MvirtError } from '../protocol/errors.js';
import type { createDebianSource, DebInput, Pins } from './debian.js';
import { sha256File } from './hash.js';
import { type ManifestInput } from './manifest.js';
import { cacheDir as defaultCacheDir } from './paths.js';
import { type Progress } from './progress.js';
import { type ResolvedRecipe } from './recipe.js';
import { run } from './run.js';
import type { BuildOptions } from './build.js';

export interface KernelParts {
  vmlinuz: string;
  release: string;
  /** Unpacked /lib/modules/<release> (Debian), or null (custom: no modules). */
  modulesDir: string | null;
  inputs: ManifestInput[];
}

export async function getKernel(
  recipe: ResolvedRecipe,
  pins: Pins,
  debian: ReturnType<typeof createDebianSource>,
  progress: Progress,
  opts: BuildOptions,
): Promise<KernelParts> {
  if (recipe.customKernelDir !== null) return customKernel(recipe.customKernelDir, progress, opts);
  if (!('debian' in recipe.kernel)) throw new MvirtError('RECIPE_INVALID', 'kernel: unknown kind');
  const meta = recipe.kernel.debian;
  const pin = pins.kernels[meta];
  let deb: DebInput;
  if (pin !== undefined) {
    try {
      deb = await debian.fetch(pin.package, pin);
    } catch (err) {
      // The ABI name changes with kernel updates: the pinned package vanishes entirely.
      if (!(err instanceof MvirtError) || err.code !== 'DOWNLOAD_FAILED') throw err;
      const current = await debian.currentKernelPackage(meta);
      progress.warn(
        `kernel ${pin.package} ${pin.version} (pinned) is unavailable: using ${current}; update images/pins.json`,
      );
      deb = await debian.fetch(current, undefined);
    }
  } else {
    progress.warn(
      `kernel ${meta} is not pinned in images/pins.json: using the archive's current version`,
    );
    const real =
      meta.startsWith('linux-image-') && /^linux-image-[a-z0-9-]+$/.test(meta)
        ? await realKernel(meta, debian)
        : meta;
    deb = await debian.fetch(real, undefined);
  }
  progress.info(`${deb.name} ${deb.version} (${deb.origin}${deb.pinned ? ', pinned' : ''})`);
  const dir = await unpackKernel(deb, cacheRoot(opts));
  const boot = await readdir(path.join(dir, 'boot'));
  const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-'));
  if (vmlinuz === undefined)
    throw new MvirtError('BUILD_FAILED', `${deb.name} contains no /boot/vmlinuz-*`);
  const release = vmlinuz.slice('vmlinuz-'.length);
  const modulesDir = path.join(dir, 'lib/modules', release);
  return {
    vmlinuz: path.join(dir, 'boot', vmlinuz),
    release,
    modulesDir,
    inputs: [
      {
        kind: 'deb',
        role: 'kernel',
        name: deb.name,
        version: deb.version,
        sha256: deb.sha256,
        pinned: deb.pinned,
        pinnedVersion: deb.pinnedVersion,
      },
    ],
  };
}

const cacheRoot = (opts: BuildOptions): string =>
  opts.cacheDir ?? defaultCacheDir(opts.env ?? process.env);

/**
 * The kernel deb unpacked (./boot, ./lib) with modules.dep generated, kept in
 * the cache by the deb's sha256: unpacking 70 MB of xz and running depmod is
 * most of an uncached build under TCG-loaded machines, and the result is a pure
 * function of a verified download (so --no-cache reuses it, like the deb).
 */
async function unpackKernel(deb: DebInput, cache: string): Promise<string> {
  const dir = path.join(cache, 'kernel-debs', deb.sha256.slice(0, 32));
  if (existsSync(path.join(dir, '.complete'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  await run('sh', [
    '-c',
    'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./boot ./lib',
    'sh',
    deb.file,
    tmp,
  ]);
  const vmlinuz = (await readdir(path.join(tmp, 'boot'))).find((f) => f.startsWith('vmlinuz-'));
  // modules.dep is generated at install time, not shipped: run depmod on the unpacked tree.
  if (vmlinuz !== undefined) await run('depmod', ['-b', tmp, vmlinuz.slice('vmlinuz-'.length)]);
  await writeFile(path.join(tmp, '.complete'), `${deb.name} ${deb.version} ${deb.sha256}\n`);
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  return dir;
}

async function realKernel(
  name: string,
  debian: ReturnType<typeof createDebianSource>,
): Promise<string> {
  try {
    return await debian.currentKernelPackage(name);
  } catch {
    return name;
  }
}

async function customKernel(
  dir: string,
  progress: Progress,
  opts: BuildOptions,
): Promise<KernelParts> {
  const script = path.join(dir, 'build.sh');
  const env = {
    ...(opts.env ?? process.env),
    ...(opts.cacheDir === undefined ? {} : { MVIRT_CACHE_DIR: opts.cacheDir }),
  };
  let r = await run('bash', [script, '--cached-path'], { env, allowFail: true });
  if (r.code !== 0) {
    if (opts.buildKernel === false)
      throw new MvirtError(
        'BUILD_FAILED',
        `the custom kernel is not built yet: run \`bash ${path.relative(process.cwd(), script)}\` (about 13 minutes)`,
      );
    progress.info('custom kernel not cached: building it (about 13 minutes on 2 cores)');
    r = await runInherit(script, env);
  }
  const kdir = r.stdout.toString().trim().split('\n').pop() ?? '';
  const meta = JSON.parse(await readFile(path.join(kdir, 'meta.json'), 'utf8')) as {
    release: string;
    key: string;
    sourceVersion: string;
  };
  const vmlinuz = path.join(kdir, 'bzImage');
  progress.info(`custom kernel ${meta.release} (${kdir})`);
  return {
    vmlinuz,
    release: meta.release,
    modulesDir: null,
    inputs: [
      {
        kind: 'file',
        role: 'custom-kernel',
        path: kdir,
        version: `${meta.release} from linux-source-6.1 ${meta.sourceVersion}`,
        sha256: await sha256File(vmlinuz),
      },
    ],
  };
}

/** Run build.sh with its progress visible (stderr passes through). */
async function runInherit(
  script: string,
  env: NodeJS.ProcessEnv,
): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const c = spawn('bash', [script], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    c.stdout.on('data', (b: Buffer) => out.push(b));
    c.on('error', reject);
    c.on('close', (code) =>
      code === 0
        ? resolve({ code: 0, stdout: Buffer.concat(out), stderr: '' })
        : reject(
            new MvirtError(
              'BUILD_FAILED',
              `kernel build failed (exit ${code}): see the output above`,
            ),
          ),
    );
  });
}
