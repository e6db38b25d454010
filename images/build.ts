/**
 * The image builder: recipe → <data-dir>/images/<name>/{vmlinuz, initrd.img,
 * rootfs.squashfs, manifest.json}.
 *
 * Layout (see initramfs/init for the memory reasoning): a small LZ4 initramfs
 * (busybox, stage-1 init, the modules needed to reach the disk) and a
 * read-only squashfs root disk (busybox init, the agent, Debian packages).
 *
 * Reproducibility: every output depends only on the inputs. Files get fixed
 * modes and owners, archives are sorted, timestamps are SOURCE_DATE_EPOCH.
 * Outputs are cached under <cache>/outputs/<key>, key = hash of all declared
 * inputs, so an unchanged rebuild only copies files.
 */
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import * as z from 'zod';
import { MvirtError } from '../protocol/errors.js';
import { VIRTIO_PORT_NAME } from '../protocol/agent.js';
import { createDebianSource, loadPins } from './debian.js';
import { cachedPlan, fetchPlan, type PackagePlan } from './deb-plan.js';
import { fileSize, sha256, sha256File, sha256Tree } from './hash.js';
import { MANIFEST_FILE, MANIFEST_SCHEMA, type Manifest, type ManifestInput } from './manifest.js';
import { parseModuleIndex, resolveModules } from './modules.js';
import {
  cacheDir as defaultCacheDir,
  DEFAULT_DATA_DIR,
  DEFAULT_RECIPE,
  INITRAMFS_DIR,
  PINS_FILE,
  PROJECT_ROOT,
} from './paths.js';
import { createProgress } from './progress.js';
import { loadRecipe, type ResolvedRecipe } from './recipe.js';
import { getKernel } from './kernel.js';
import { buildInitramfs, buildRootfs } from './layout.js';

/** Bump when the builder changes its outputs for the same inputs. */
export const BUILDER_VERSION = 1;
/** Default SOURCE_DATE_EPOCH (2024-01-01T00:00:00Z) so builds are reproducible without setting it. */
export const DEFAULT_SOURCE_DATE_EPOCH = 1704067200;

export const OUTPUT_FILES = {
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  disk: 'rootfs.squashfs',
} as const;

export interface BuildOptions {
  recipe?: string;
  dataDir?: string;
  /** Where the image goes (default <dataDir>/images): mvirtd's --images-dir. */
  imagesDir?: string;
  noCache?: boolean;
  cacheDir?: string;
  /** Where relative recipe paths resolve (default: the checkout). */
  root?: string;
  /** Build the custom kernel when it is not cached (else fail with a hint). Default true. */
  buildKernel?: boolean;
  log?: (s: string) => void;
  env?: NodeJS.ProcessEnv;
}

export interface BuildResult {
  dir: string;
  manifest: Manifest;
  fromCache: boolean;
}

const STEPS = 8;

export async function buildImage(opts: BuildOptions = {}): Promise<BuildResult> {
  const t0 = Date.now();
  const env = opts.env ?? process.env;
  const progress = createProgress(STEPS, opts.log);
  const cache = opts.cacheDir ?? defaultCacheDir(env);
  const dataDir = opts.dataDir ?? DEFAULT_DATA_DIR;
  const sde = sourceDateEpoch(env);

  const recipe = await progress.step('recipe', async () => {
    const r = await loadRecipe(opts.recipe ?? DEFAULT_RECIPE, opts.root ?? PROJECT_ROOT);
    progress.info(`${r.name} from ${r.source}`);
    return r;
  });
  const pins = await loadPins(PINS_FILE);

  const { key, localInputs, plan } = await progress.step('hash inputs', async () => {
    // The package closure is an input: a new version in apt's index is a new key.
    const p = await cachedPlan(
      cache,
      recipe.packages,
      pins.packages,
      recipe.maxPackagesMiB,
      env,
      progress,
    );
    progress.info(
      `${p.debs.length} packages (${mib(p.installedKiB * 1024)} installed, ${mib(p.downloadBytes)} to download when not cached)`,
    );
    const k = await inputKey(recipe, sde, p);
    progress.info(`key ${k.key.slice(0, 16)}`);
    return { ...k, plan: p };
  });
  const outCache = path.join(cache, 'outputs', key);
  const imageDir = path.join(opts.imagesDir ?? path.join(dataDir, 'images'), recipe.name);

  if (opts.noCache !== true && existsSync(path.join(outCache, MANIFEST_FILE))) {
    const manifest = await progress.step('install cached outputs', async () => {
      const m = JSON.parse(await readFile(path.join(outCache, MANIFEST_FILE), 'utf8')) as Manifest;
      m.build = {
        ...m.build,
        at: new Date().toISOString(),
        seconds: (Date.now() - t0) / 1000,
        fromCache: true,
      };
      await install(outCache, imageDir, m);
      return m;
    });
    progress.info(`cache hit: ${imageDir} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    return { dir: imageDir, manifest, fromCache: true };
  }

  const work = path.join(cache, 'work', `${key.slice(0, 16)}-${process.pid}`);
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    const debian = createDebianSource(cache, progress);
    const kernel = await progress.step('kernel', () =>
      getKernel(recipe, pins, debian, progress, opts),
    );
    const debs = await progress.step('packages', () =>
      fetchPlan(plan, { cacheDir: cache, debian, pins: pins.packages, progress, env }),
    );
    const mods = await progress.step('modules', async () => {
      if (kernel.modulesDir === null) {
        progress.info('custom kernel: everything built in');
        return [];
      }
      const dep = await readFile(path.join(kernel.modulesDir, 'modules.dep'), 'utf8');
      const builtin = await readFile(path.join(kernel.modulesDir, 'modules.builtin'), 'utf8').catch(
        () => '',
      );
      const r = resolveModules(
        recipe.modules,
        parseModuleIndex(dep, builtin),
        `kernel ${kernel.release}`,
      );
      if (r.builtin.length > 0) progress.info(`built in: ${r.builtin.join(' ')}`);
      progress.info(
        `${r.order.length} modules to load: ${r.order.map((p) => path.basename(p, '.ko')).join(' ')}`,
      );
      return r.order;
    });
    const busybox = debs[0];
    if (busybox === undefined) throw new MvirtError('BUILD_FAILED', 'busybox-static missing');

    const outDir = path.join(work, 'out');
    await mkdir(outDir);
    await copyFile(kernel.vmlinuz, path.join(outDir, OUTPUT_FILES.kernel));

    await progress.step('initramfs', () =>
      buildInitramfs({
        work,
        outFile: path.join(outDir, OUTPUT_FILES.initrd),
        busybox,
        kernel,
        mods,
        sde,
      }),
    );
    await progress.step(`root disk (squashfs, ${recipe.rootfs.compression})`, () =>
      buildRootfs({
        work,
        outFile: path.join(outDir, OUTPUT_FILES.disk),
        recipe,
        debs,
        sde,
        progress,
      }),
    );

    const manifest = await progress.step('manifest + install', async () => {
      const outputs: Manifest['outputs'] = [];
      for (const f of [OUTPUT_FILES.kernel, OUTPUT_FILES.initrd, OUTPUT_FILES.disk]) {
        const p = path.join(outDir, f);
        outputs.push({ file: f, sha256: await sha256File(p), size: await fileSize(p) });
      }
      const size = (f: string): number => outputs.find((o) => o.file === f)?.size ?? 0;
      const m: Manifest = {
        schema: MANIFEST_SCHEMA,
        name: recipe.name,
        key,
        kernel: {
          file: OUTPUT_FILES.kernel,
          release: kernel.release,
          source: recipe.customKernelDir === null ? 'debian' : 'custom',
        },
        initrd: { file: OUTPUT_FILES.initrd, compression: 'lz4' },
        disk: {
          file: OUTPUT_FILES.disk,
          format: 'squashfs',
          compression: recipe.rootfs.compression,
          readOnly: true,
          bus: 'virtio-blk',
        },
        cmdline: recipe.cmdline,
        boot: {
          machine: recipe.machine,
          transport: recipe.machine === 'microvm' ? 'virtio-mmio' : 'virtio-pci',
          serialConsole: 'ttyS0',
          consoleShell: recipe.console === 'shell',
          agentPort: VIRTIO_PORT_NAME,
          minMemoryMiB: 128,
          testedAccel: ['tcg'],
        },
        inputs: [
          ...kernel.inputs,
          ...debs.map((d, i): ManifestInput => ({
            kind: 'deb',
            role: i === 0 ? 'busybox' : 'package',
            name: d.name,
            version: d.version,
            sha256: d.sha256,
            pinned: d.pinned,
            pinnedVersion: d.pinnedVersion,
          })),
          ...localInputs,
        ],
        outputs,
        sizes: {
          kernelPlusInitrd: size(OUTPUT_FILES.kernel) + size(OUTPUT_FILES.initrd),
          total: outputs.reduce((s, o) => s + o.size, 0),
        },
        modules: mods,
        build: {
          at: new Date().toISOString(),
          seconds: (Date.now() - t0) / 1000,
          fromCache: false,
          sourceDateEpoch: sde,
          builderVersion: BUILDER_VERSION,
        },
        warnings: [...progress.warnings],
      };
      await writeFile(path.join(outDir, MANIFEST_FILE), `${JSON.stringify(m, null, 2)}\n`);
      // Into the output cache first (atomic rename), then a copy into the data dir.
      await rm(outCache, { recursive: true, force: true });
      await mkdir(path.dirname(outCache), { recursive: true });
      await rename(outDir, outCache);
      await install(outCache, imageDir, m);
      return m;
    });
    progress.info(
      `built ${imageDir} in ${manifest.build.seconds.toFixed(1)}s: kernel+initrd ${mib(manifest.sizes.kernelPlusInitrd)}, total ${mib(manifest.sizes.total)}`,
    );
    return { dir: imageDir, manifest, fromCache: false };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

export function sourceDateEpoch(env: NodeJS.ProcessEnv): number {
  const v = env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return DEFAULT_SOURCE_DATE_EPOCH;
  if (!/^\d+$/.test(v))
    throw new MvirtError(
      'CONFIG_INVALID',
      `SOURCE_DATE_EPOCH must be a number of seconds, got "${v}"`,
    );
  return Number(v);
}

/** guest-agent/build.mjs's record of the Node runtime it built the agent on. */
const AgentRuntime = z.strictObject({
  node: z.string().regex(/^v\d+\.\d+\.\d+$/),
  source: z.string().min(1).max(4096),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});

/**
 * The agent's runtime as a manifest input, from `<agent>.runtime.json` next
 * to it; none for an agent built elsewhere (no such file).
 */
export async function agentRuntime(agentPath: string): Promise<ManifestInput | null> {
  const file = `${agentPath}.runtime.json`;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return null;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const r = AgentRuntime.safeParse(parsed);
  if (!r.success)
    throw new MvirtError(
      'BUILD_FAILED',
      `${file} is not guest-agent/build.mjs's runtime record: rebuild the agent (node scripts/build.mjs)`,
    );
  return {
    kind: 'file',
    role: 'agent-runtime',
    path: r.data.source,
    version: r.data.node,
    sha256: r.data.sha256,
  };
}

/**
 * The cache key: the recipe, the pins, the local files (agent, extra files,
 * initramfs/, kernel-config/ for custom kernels), the builder's own source and
 * SOURCE_DATE_EPOCH. Debian packages enter as the resolved closure (name,
 * version, sha256 from apt's index or the pin), so `apt-get update` bringing
 * a new version rebuilds and nothing new reuses the outputs.
 */
async function inputKey(
  recipe: ResolvedRecipe,
  sde: number,
  plan: PackagePlan,
): Promise<{ key: string; localInputs: ManifestInput[] }> {
  const local: ManifestInput[] = [];
  const rel = (p: string): string =>
    p.startsWith(`${PROJECT_ROOT}/`) ? path.relative(PROJECT_ROOT, p) : p;
  local.push({
    kind: 'file',
    role: 'agent',
    path: rel(recipe.agentPath),
    dest: '/usr/bin/mvirt-agent',
    sha256: await sha256File(recipe.agentPath),
  });
  const runtime = await agentRuntime(recipe.agentPath);
  if (runtime) local.push(runtime);
  for (const f of recipe.fileSources)
    local.push({
      kind: 'file',
      role: 'file',
      path: rel(f.src),
      dest: f.dest,
      sha256: await sha256File(f.src),
    });
  local.push({
    kind: 'file',
    role: 'initramfs',
    path: 'initramfs/',
    sha256: await sha256Tree(INITRAMFS_DIR),
  });
  if (recipe.customKernelDir !== null)
    local.push({
      kind: 'file',
      role: 'kernel-config',
      path: rel(recipe.customKernelDir),
      sha256: await sha256Tree(path.join(recipe.customKernelDir, 'fragments')),
    });
  local.push({
    kind: 'file',
    role: 'pins',
    path: 'images/pins.json',
    sha256: await sha256File(PINS_FILE),
  });
  const builderDir = path.join(PROJECT_ROOT, 'images');
  const srcs = (await readdir(builderDir)).filter((f) => f.endsWith('.ts')).sort();
  const bh: string[] = [];
  for (const f of srcs) bh.push(`${f} ${await sha256File(path.join(builderDir, f))}`);
  local.push({
    kind: 'file',
    role: 'builder',
    path: 'images/*.ts',
    version: String(BUILDER_VERSION),
    sha256: sha256(bh.join('\n')),
  });
  const { source: _s, agentPath: _a, customKernelDir: _c, fileSources: _f, ...decl } = recipe;
  const key = sha256(
    JSON.stringify({
      recipe: decl,
      sde,
      debs: plan.debs.map((d) => [d.name, d.version, d.sha256]),
      local: local.map((i) => [i.role, 'dest' in i ? i.dest : '', i.sha256]),
    }),
  );
  return { key, localInputs: local };
}

// ------------------------------------------------------------------ install

/** Copy outputs into the data dir via a temp folder + rename, so a reader never sees half an image. */
async function install(from: string, imageDir: string, m: Manifest): Promise<void> {
  const tmp = `${imageDir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  for (const o of m.outputs) await copyFile(path.join(from, o.file), path.join(tmp, o.file));
  await writeFile(path.join(tmp, MANIFEST_FILE), `${JSON.stringify(m, null, 2)}\n`);
  const old = `${imageDir}.old-${process.pid}`;
  if (existsSync(imageDir)) await rename(imageDir, old);
  await rename(tmp, imageDir);
  await rm(old, { recursive: true, force: true });
}
