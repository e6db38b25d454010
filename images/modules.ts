/**
 * Kernel module selection: names from the recipe → .ko paths in load order
 * (dependencies first), from depmod's modules.dep. The order is computed at
 * build time so the guest's init can insmod a fixed list: no depmod or
 * modprobe logic at boot.
 */
import { MvirtError } from '../protocol/errors.js';

export interface ModuleIndex {
  /** Normalised module name → path relative to /lib/modules/<release>/. */
  paths: Map<string, string>;
  /** Path → paths of its dependencies (as listed in modules.dep). */
  deps: Map<string, string[]>;
  /** Names of modules built into the kernel. */
  builtin: Set<string>;
}

/** `virtio-blk`, `virtio_blk.ko`, `kernel/x/virtio_blk.ko.xz` → `virtio_blk`. */
export const moduleName = (p: string): string =>
  (p.split('/').pop() ?? p).replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');

export function parseModuleIndex(modulesDep: string, modulesBuiltin = ''): ModuleIndex {
  const paths = new Map<string, string>();
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const mod = line.slice(0, colon).trim();
    const ds = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((d) => d !== '');
    paths.set(moduleName(mod), mod);
    deps.set(mod, ds);
  }
  const builtin = new Set(
    modulesBuiltin
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .map(moduleName),
  );
  return { paths, deps, builtin };
}

export interface ResolvedModules {
  /** Module paths in load order: every module after all its dependencies. */
  order: string[];
  /** Requested names that are built into the kernel (nothing to load). */
  builtin: string[];
}

export function resolveModules(
  names: readonly string[],
  index: ModuleIndex,
  kernel = 'the kernel',
): ResolvedModules {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const builtin: string[] = [];
  const visit = (p: string, chain: string[]): void => {
    if (done.has(p)) return;
    if (visiting.has(p))
      throw new MvirtError(
        'BUILD_FAILED',
        `modules.dep has a dependency cycle: ${[...chain, p].join(' -> ')}`,
      );
    visiting.add(p);
    for (const d of index.deps.get(p) ?? []) visit(d, [...chain, p]);
    visiting.delete(p);
    done.add(p);
    order.push(p);
  };
  for (const raw of names) {
    const n = moduleName(raw);
    const p = index.paths.get(n);
    if (p !== undefined) visit(p, []);
    else if (index.builtin.has(n)) builtin.push(n);
    else
      throw new MvirtError(
        'RECIPE_INVALID',
        `modules: "${raw}" is not a module of ${kernel}: check the name (see modules.dep / modinfo) or remove it`,
      );
  }
  return { order, builtin };
}
