/**
 * Images over the API (image.*): list and read what the images folder holds,
 * delete one no VM or pool uses, build one from a recipe sent as a message,
 * import a container image from --image-import-dir. Builds and imports run
 * the same code as `mvirt image build|import --data-dir` (images/); their
 * progress lines become events (component `image`, object `image:<name>`)
 * that `mvirt image build|import` follows. One build or import per name at
 * a time; every change is an audit event naming who made it.
 */
import { lstat, readdir, realpath, rename, rm, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { buildImage } from '../../images/build.js';
import { readManifest, type Manifest } from '../../images/manifest.js';
import { importImage } from '../../images/oci/import.js';
import { cacheDir as defaultCacheDir, PROJECT_ROOT } from '../../images/paths.js';
import { parseRecipe } from '../../images/recipe.js';
import { MvirtError } from '../../protocol/errors.js';
import type { ImageDetails, ImageRecord } from '../../protocol/image.js';
import type { DryRunPlan } from '../../protocol/plan.js';
import { nameProblem } from '../../protocol/topics.js';
import type { AppendEvent } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import { createPlan } from '../plan.js';
import type { Store } from '../store/index.js';
import type { DaemonOptions } from '../daemon/options.js';

export interface ImageManagerDeps {
  /** --image-import-dir (imageImportDir): the only place image.import reads from; null: none. */
  options: Pick<DaemonOptions, 'imagesDir' | 'imageImportDir' | 'dataDir'>;
  store: Pick<Store, 'vms' | 'pools'>;
  events: { append(e: AppendEvent): unknown };
  log: MvirtLogger;
  cacheDir?: string;
}

/** The event object of an image's progress and audit records. */
export const imageObject = (name: string): string => `image:${name}`;

export function createImageManager(deps: ImageManagerDeps) {
  const { imagesDir, imageImportDir: importDir, dataDir } = deps.options;
  const d = { ...deps, imagesDir, importDir, dataDir };
  const busy = new Set<string>();
  const cache = d.cacheDir ?? defaultCacheDir();

  function usedBy(name: string): ImageRecord['usedBy'] {
    return {
      vms: d.store.vms
        .list()
        .filter((v) => v.image === name)
        .map((v) => v.id),
      pools: d.store.pools
        .list()
        .filter((p) => p.image === name)
        .map((p) => p.name),
    };
  }

  const record = (name: string, m: Manifest): ImageRecord => ({
    name,
    kind: m.container ? 'imported' : 'built',
    key: m.key,
    sizeBytes: m.sizes.total,
    builtAt: m.build.at,
    kernel: m.kernel.release,
    ...(m.container ? { base: m.container.base.name, rootDigest: m.container.rootDigest } : {}),
    usedBy: usedBy(name),
  });

  async function manifestOf(name: string): Promise<Manifest> {
    if (nameProblem(name) !== null)
      throw new MvirtError('IMAGE_NOT_FOUND', `no image named ${name}`);
    return readManifest(path.join(d.imagesDir, name)).catch((err: unknown) => {
      throw new MvirtError('IMAGE_NOT_FOUND', `no image named ${name} in ${d.imagesDir}`, {
        cause: err,
      });
    });
  }

  function progress(name: string): (s: string) => void {
    return (s) => {
      for (const line of s.split('\n')) {
        const msg = line.trim();
        if (msg !== '')
          d.events.append({
            level: 'info',
            component: 'image',
            message: `${name}: ${msg}`,
            objects: [imageObject(name)],
          });
      }
    };
  }

  async function exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (busy.has(name))
      throw new MvirtError('IMAGE_IN_USE', `image ${name} is being built or imported; wait for it`);
    busy.add(name);
    try {
      return await fn();
    } finally {
      busy.delete(name);
    }
  }

  async function checkDelete(name: string): Promise<Manifest> {
    const m = await manifestOf(name);
    const use = usedBy(name);
    if (busy.has(name) || use.vms.length > 0 || use.pools.length > 0)
      throw new MvirtError(
        'IMAGE_IN_USE',
        `image ${name} is used by ${[...use.vms.map((v) => `VM ${v}`), ...use.pools.map((p) => `pool ${p}`)].join(', ') || 'a build or import'}: delete those or change the pool first`,
        { details: use },
      );
    return m;
  }

  /**
   * A recipe sent over the API names no host file: mvirtd would read it
   * into an image anyone may boot. Only the shipped agent and kernel-config.
   */
  function checkRecipe(json: Record<string, unknown>): ReturnType<typeof parseRecipe> {
    const r = parseRecipe(json, 'image.build recipe');
    const problems: string[] = [];
    if (r.files.length > 0)
      problems.push(
        'files: a recipe sent over the API may not copy host files; build it with `mvirt image build --data-dir` on the host',
      );
    if (r.agent !== 'dist/agent/mvirt-agent')
      problems.push('agent: a recipe sent over the API uses the shipped agent; remove "agent"');
    if ('custom' in r.kernel && r.kernel.custom !== 'kernel-config')
      problems.push('kernel.custom: only "kernel-config" over the API');
    if (problems.length > 0)
      throw new MvirtError('RECIPE_INVALID', `image.build: ${problems.join('; ')}`, {
        details: problems,
      });
    return r;
  }

  async function importSource(file: string): Promise<string> {
    if (d.importDir === null)
      throw new MvirtError(
        'IMPORT_REFUSED',
        'no import folder is configured (mvirtd --image-import-dir)',
      );
    const base = await realpath(d.importDir);
    const src = path.join(base, file);
    const st = await lstat(src).catch(() => null);
    if (st === null || st.isSymbolicLink() || !st.isFile())
      throw new MvirtError(
        'IMPORT_REFUSED',
        `${file} is not a regular file in the image import folder (links are not followed)`,
      );
    return src;
  }

  function audit(name: string, message: string, data?: unknown): void {
    d.events.append({
      level: 'audit',
      component: 'image',
      message: `${name}: ${message}`,
      objects: [imageObject(name)],
      ...(data !== undefined ? { data } : {}),
    });
  }

  const plan = (method: string) => createPlan(method, d.dataDir);

  return {
    async list(): Promise<ImageRecord[]> {
      let names: string[];
      try {
        names = await readdir(d.imagesDir);
      } catch {
        return [];
      }
      const out: ImageRecord[] = [];
      for (const n of names.sort()) {
        if (nameProblem(n) !== null) continue;
        const m = await readManifest(path.join(d.imagesDir, n)).catch(() => null);
        if (m) out.push(record(n, m));
      }
      return out;
    },

    async get(name: string): Promise<ImageDetails> {
      const m = await manifestOf(name);
      return { image: record(name, m), manifest: m as unknown as Record<string, unknown> };
    },

    async delete(name: string): Promise<void> {
      await checkDelete(name);
      const dir = path.join(d.imagesDir, name);
      // Out of the listing first (a dot name is no image), then away.
      const gone = path.join(d.imagesDir, `.${name}.deleting-${process.pid}`);
      await rename(dir, gone);
      await rm(gone, { recursive: true, force: true });
      audit(name, 'deleted');
    },

    async build(json: Record<string, unknown>, noCache: boolean): Promise<ImageRecord> {
      const r = checkRecipe(json);
      return exclusive(r.name, async () => {
        const work = path.join(cache, 'work', `api-recipe-${process.pid}-${r.name}`);
        await mkdir(work, { recursive: true });
        const file = path.join(work, 'recipe.json');
        await writeFile(file, JSON.stringify(json));
        try {
          const res = await buildImage({
            recipe: file,
            root: PROJECT_ROOT,
            dataDir: d.dataDir,
            imagesDir: d.imagesDir,
            noCache,
            cacheDir: cache,
            log: progress(r.name),
          });
          audit(
            r.name,
            `built (key ${res.manifest.key.slice(0, 16)}${res.fromCache ? ', from cache' : ''})`,
          );
          return record(r.name, res.manifest);
        } finally {
          await rm(work, { recursive: true, force: true });
        }
      });
    },

    async import(p: {
      file: string;
      name: string;
      base?: string | undefined;
    }): Promise<ImageRecord> {
      const src = await importSource(p.file);
      return exclusive(p.name, async () => {
        const res = await importImage({
          source: src,
          name: p.name,
          imagesDir: d.imagesDir,
          dataDir: d.dataDir,
          cacheDir: cache,
          ...(p.base !== undefined ? { base: p.base } : {}),
          log: progress(p.name),
        });
        audit(
          p.name,
          `imported from ${p.file} (root ${res.manifest.container!.rootDigest.slice(0, 16)})`,
          {
            layers: res.manifest.container!.layers.map((l) => l.digest),
          },
        );
        return record(p.name, res.manifest);
      });
    },

    plan: {
      async delete(name: string): Promise<DryRunPlan> {
        await checkDelete(name);
        return plan('image.delete')
          .admit(`image ${name} exists and no VM or pool uses it`)
          .step('remove folder')
          .remove(`${path.join(d.imagesDir, name)}/`)
          .change(`image ${name}: deleted`)
          .done();
      },
      async build(json: Record<string, unknown>): Promise<DryRunPlan> {
        const r = checkRecipe(json);
        return plan('image.build')
          .admit(`recipe ${r.name} is valid and names no host file`)
          .step(
            'recipe',
            'hash inputs',
            'kernel',
            'packages',
            'modules',
            'initramfs',
            'root disk',
            'manifest + install',
          )
          .create(`${path.join(d.imagesDir, r.name)}/`)
          .change(`image ${r.name}: built`)
          .done();
      },
      async import(p: { file: string; name: string }): Promise<DryRunPlan> {
        await importSource(p.file);
        return plan('image.import')
          .admit(`${p.file} is a regular file in the image import folder`)
          .step('read the image', 'cache blobs', 'apply layers + root disk', 'install')
          .create(`${path.join(d.imagesDir, p.name)}/`)
          .change(`image ${p.name}: imported`)
          .done();
      },
    },
  };
}

export type ImageManager = ReturnType<typeof createImageManager>;
