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
import {
  chmod,
  copyFile,
  cp,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { MvirtError } from '../protocol/errors.js';
import { VIRTIO_PORT_NAME } from '../protocol/agent.js';
import { cpioNewc, S_IFCHR, treeEntries } from './cpio.js';
import { createDebianSource, loadPins, type DebInput, type Pins } from './debian.js';
import { fileSize, sha256, sha256File, sha256Tree, walkSorted } from './hash.js';
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
import { createProgress, type Progress } from './progress.js';
import { loadRecipe, type ResolvedRecipe } from './recipe.js';
import { run } from './run.js';

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

interface KernelParts {
  vmlinuz: string;
  release: string;
  /** Unpacked /lib/modules/<release> (Debian), or null (custom: no modules). */
  modulesDir: string | null;
  inputs: ManifestInput[];
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

  const { key, localInputs } = await progress.step('hash inputs', async () => {
    const k = await inputKey(recipe, sde);
    progress.info(`key ${k.key.slice(0, 16)}`);
    return k;
  });
  const outCache = path.join(cache, 'outputs', key);
  const imageDir = path.join(dataDir, 'images', recipe.name);

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
    const debs = await progress.step('packages', async () => {
      const names = await debian.closure([...recipe.packages]);
      const wanted = ['busybox-static', ...names.filter((n) => n !== 'busybox-static')];
      const out: DebInput[] = [];
      for (const n of wanted) {
        const d = await debian.fetch(n, pins.packages[n]);
        progress.info(
          `${d.name} ${d.version} (${d.origin}${d.pinned ? ', pinned' : ', NOT pinned'})`,
        );
        out.push(d);
      }
      return out;
    });
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
      buildRootfs({ work, outFile: path.join(outDir, OUTPUT_FILES.disk), recipe, debs, sde }),
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

/**
 * The cache key: the recipe, the pins, the local files (agent, extra files,
 * initramfs/, kernel-config/ for custom kernels), the builder's own source and
 * SOURCE_DATE_EPOCH. Debian packages enter through their pins; unpinned
 * packages resolve at the first build (use --no-cache to refresh them).
 */
async function inputKey(
  recipe: ResolvedRecipe,
  sde: number,
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
      local: local.map((i) => [i.role, 'dest' in i ? i.dest : '', i.sha256]),
    }),
  );
  return { key, localInputs: local };
}

async function getKernel(
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

// ------------------------------------------------------------------ initramfs

async function busyboxApplets(busyboxBin: string): Promise<string[]> {
  // The static busybox from the package runs on the build host too.
  const r = await run(busyboxBin, ['--list-full']);
  return r.stdout
    .toString()
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('/'))
    .sort();
}

async function extractDeb(file: string, dest: string): Promise<void> {
  await run('dpkg-deb', ['-x', file, dest]);
}

async function buildInitramfs(a: {
  work: string;
  outFile: string;
  busybox: DebInput;
  kernel: KernelParts;
  mods: string[];
  sde: number;
}): Promise<void> {
  const stage = path.join(a.work, 'initramfs');
  const bbx = path.join(a.work, 'busybox');
  await extractDeb(a.busybox.file, bbx);
  for (const d of [
    'bin',
    'dev',
    'etc/mvirt',
    'lib/modules',
    'newroot',
    'proc',
    'run',
    'sys',
    'tmp',
  ])
    await mkdir(path.join(stage, d), { recursive: true });
  await copyFile(path.join(bbx, 'bin/busybox'), path.join(stage, 'bin/busybox'));
  // Flat /bin: stage 1 needs no /sbin or /usr distinctions.
  for (const applet of await busyboxApplets(path.join(bbx, 'bin/busybox'))) {
    const name = path.basename(applet);
    if (name !== 'busybox' && !existsSync(path.join(stage, 'bin', name)))
      await symlink('busybox', path.join(stage, 'bin', name));
  }
  await copyFile(path.join(INITRAMFS_DIR, 'init'), path.join(stage, 'init'));
  if (a.kernel.modulesDir !== null) {
    for (const m of a.mods) {
      const dest = path.join(stage, 'lib/modules', a.kernel.release, m);
      await mkdir(path.dirname(dest), { recursive: true });
      await copyFile(path.join(a.kernel.modulesDir, m), dest);
    }
  }
  await writeFile(path.join(stage, 'etc/mvirt/modules'), a.mods.map((m) => `${m}\n`).join(''));
  await normaliseModes(stage);
  // /dev/console must exist before devtmpfs is mounted: the kernel opens it for /init's stdio.
  const entries = await treeEntries(stage, [
    { name: 'dev/console', mode: S_IFCHR | 0o600, rdev: { major: 5, minor: 1 } },
  ]);
  const cpio = cpioNewc(entries, a.sde);
  // Legacy LZ4 framing (-l) is what the kernel's initramfs decompressor reads.
  const lz = await run('lz4', ['-l', '-9', '-q', '-c'], { input: cpio });
  await writeFile(a.outFile, lz.stdout);
}

/**
 * Modes from git checkouts depend on umask: make them canonical (dirs 0755,
 * executables 0755, other files 0644) unless a recipe set one explicitly.
 */
async function normaliseModes(
  dir: string,
  keep: ReadonlyMap<string, number> = new Map(),
): Promise<void> {
  for (const rel of await walkSorted(dir)) {
    const p = path.join(dir, rel);
    const st = await lstat(p);
    if (st.isSymbolicLink()) continue;
    const explicit = keep.get(rel);
    if (explicit !== undefined) await chmod(p, explicit);
    else if (st.isDirectory()) await chmod(p, (st.mode & 0o7000) | 0o755);
    else await chmod(p, (st.mode & 0o7000) | (st.mode & 0o111 ? 0o755 : 0o644));
  }
}

// ------------------------------------------------------------------ root disk

const PRUNE = [
  'usr/share/doc',
  'usr/share/man',
  'usr/share/info',
  'usr/share/lintian',
  'usr/share/locale',
  'usr/share/bug',
];

async function buildRootfs(a: {
  work: string;
  outFile: string;
  recipe: ResolvedRecipe;
  debs: DebInput[];
  sde: number;
}): Promise<void> {
  const stage = path.join(a.work, 'rootfs');
  await mkdir(stage);
  for (const d of a.debs) await extractDeb(d.file, stage);
  await mergeUsr(stage);
  for (const p of PRUNE) await rm(path.join(stage, p), { recursive: true, force: true });
  for (const d of [
    'dev',
    'proc',
    'sys',
    'run',
    'tmp',
    'mnt',
    'root',
    'home',
    'var',
    'etc',
    'usr/bin',
    'usr/sbin',
    'usr/lib',
    'usr/libexec',
  ])
    await mkdir(path.join(stage, d), { recursive: true });
  for (const applet of await busyboxApplets(path.join(stage, 'usr/bin/busybox'))) {
    const dest = path.join(stage, 'usr', applet.replace(/^(usr\/)?/, ''));
    if (path.basename(dest) === 'busybox') continue;
    if (!existsSync(dest)) {
      await mkdir(path.dirname(dest), { recursive: true });
      await symlink('/usr/bin/busybox', dest);
    }
  }
  // The µOS userland (inittab, rcS, agent wrapper) overrides package files.
  await cp(path.join(INITRAMFS_DIR, 'rootfs'), stage, {
    recursive: true,
    force: true,
    verbatimSymlinks: true,
  });
  await copyFile(a.recipe.agentPath, path.join(stage, 'usr/bin/mvirt-agent'));
  await chmod(path.join(stage, 'usr/bin/mvirt-agent'), 0o755);
  const explicit = new Map<string, number>([['usr/bin/mvirt-agent', 0o755]]);
  for (const f of a.recipe.fileSources) {
    const dest = path.join(stage, f.dest);
    await mkdir(path.dirname(dest), { recursive: true });
    await rm(dest, { force: true });
    await copyFile(f.src, dest);
    if (f.mode !== null) explicit.set(f.dest.replace(/^\/+/, ''), f.mode);
  }
  await writeFile(
    path.join(stage, 'etc/mvirt-image'),
    `name=${a.recipe.name}\n` + a.debs.map((d) => `deb=${d.name} ${d.version}\n`).join(''),
  );
  await normaliseModes(stage, explicit);
  await chmod(path.join(stage, 'tmp'), 0o1777);
  await chmod(path.join(stage, 'root'), 0o700);
  const comp = a.recipe.rootfs.compression;
  await run('mksquashfs', [
    stage,
    a.outFile,
    '-noappend',
    '-quiet',
    '-no-progress',
    '-comp',
    comp,
    ...(comp === 'zstd' ? ['-Xcompression-level', '15'] : comp === 'lz4' ? ['-Xhc'] : []),
    '-reproducible',
    '-mkfs-time',
    String(a.sde),
    '-all-time',
    String(a.sde),
    '-all-root',
    '-no-xattrs',
  ]);
}

/**
 * Debian 12 packages still ship /bin, /lib, /lib64 (usrmerge happens at
 * install time). Merge them into /usr and leave the usual symlinks, so that
 * /lib64/ld-linux-x86-64.so.2 (the agent's ELF interpreter) resolves.
 */
async function mergeUsr(stage: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'lib', 'lib64']) {
    const top = path.join(stage, d);
    const usr = path.join(stage, 'usr', d);
    await mkdir(usr, { recursive: true });
    if (existsSync(top)) {
      const st = await lstat(top);
      if (st.isDirectory()) {
        await mergeInto(top, usr);
        await rm(top, { recursive: true, force: true });
      } else await rm(top, { force: true });
    }
    await symlink(`usr/${d}`, top);
  }
}

async function mergeInto(from: string, to: string): Promise<void> {
  for (const name of await readdir(from)) {
    const src = path.join(from, name);
    const dst = path.join(to, name);
    const st = await lstat(src);
    if (st.isDirectory() && existsSync(dst) && (await lstat(dst)).isDirectory())
      await mergeInto(src, dst);
    else {
      await rm(dst, { recursive: true, force: true });
      await rename(src, dst);
    }
  }
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
