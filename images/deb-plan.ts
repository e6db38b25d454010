/**
 * A recipe's packages from name to file: the closure from apt's index
 * (deb-index.ts), the size cap, the pins, then the downloads into a
 * content-addressed cache, `<cache>/debs/sha256/<sha256>.deb`, shared by every
 * image and build of the machine (a .deb is stored only after its sha256
 * matched the index's, so a cached file's name is its digest).
 *
 * Pins (images/pins.json) keep the default image's base libraries fixed; a pin
 * is used only while it satisfies every versioned dependency of the closure,
 * else the index's version is used with a warning to update the pin.
 */
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../protocol/errors.js';
import {
  constraintsOn,
  parseIndex,
  resolveClosure,
  satisfies,
  type DebIndex,
  type IndexEntry,
} from './deb-index.js';
import type { DebianSource, DebInput, Pins } from './debian.js';
import { sha256, sha256File } from './hash.js';
import type { Progress } from './progress.js';
import { run } from './run.js';

/** Always in the image: the µOS's shell and tools. */
export const BASE_PACKAGE = 'busybox-static';

export interface PlannedDeb {
  name: string;
  version: string;
  sha256: string;
  /** From the index (downloaded by digest) or a pin (debian.ts's pin policy). */
  source: 'index' | 'pin';
  entry: IndexEntry;
}

export interface PackagePlan {
  debs: PlannedDeb[];
  installedKiB: number;
  downloadBytes: number;
}

/** Load apt's index (`apt-cache dumpavail`: the candidate version of every package). */
export async function loadAptIndex(env: NodeJS.ProcessEnv = process.env): Promise<DebIndex> {
  const r = await run('apt-cache', ['dumpavail'], { env, code: 'DOWNLOAD_FAILED' });
  const index = parseIndex(r.stdout.toString());
  if (index.get(BASE_PACKAGE) === undefined)
    throw new MvirtError(
      'DOWNLOAD_FAILED',
      `apt's package index has no ${BASE_PACKAGE}: run \`apt-get update\` (the builder reads Debian 12's index)`,
    );
  return index;
}

/**
 * The closure of `requested` (plus busybox-static), checked against
 * `maxMiB` of installed size before anything is downloaded.
 */
export function planPackages(
  index: DebIndex,
  requested: readonly string[],
  pins: Pins['packages'],
  maxMiB: number,
  progress?: Progress,
): PackagePlan {
  const closure = resolveClosure(index, [BASE_PACKAGE, ...requested]);
  const mib = closure.installedKiB / 1024;
  if (mib > maxMiB) {
    const top = [...closure.packages]
      .sort((a, b) => b.installedKiB - a.installedKiB)
      .slice(0, 5)
      .map(
        (p) =>
          `${p.name} ${Math.round(p.installedKiB / 1024)} MiB (for ${closure.why.get(p.name) ?? '?'})`,
      );
    throw new MvirtError(
      'IMAGE_TOO_LARGE',
      `packages: the closure of ${requested.join(' ') || '(none)'} is ${closure.packages.length} packages, ${Math.round(mib)} MiB installed, over the recipe's maxPackagesMiB ${maxMiB}: drop packages or raise maxPackagesMiB (largest: ${top.join(', ')})`,
      { details: { installedMiB: Math.round(mib), maxPackagesMiB: maxMiB, largest: top } },
    );
  }
  const debs = closure.packages.map((e): PlannedDeb => {
    const pin = pins[e.name];
    if (pin === undefined || pin.version === e.version)
      return {
        name: e.name,
        version: e.version,
        sha256: pin?.sha256 ?? e.sha256,
        source: pin === undefined ? 'index' : 'pin',
        entry: e,
      };
    const unmet = constraintsOn(closure, e.name).filter(
      (r) => !satisfies(pin.version, r.op, r.version),
    );
    if (unmet.length === 0)
      return { name: e.name, version: pin.version, sha256: pin.sha256, source: 'pin', entry: e };
    progress?.warn(
      `${e.name} ${pin.version} (pinned) does not satisfy ${unmet.map((r) => `${r.op ?? ''} ${r.version ?? ''}`).join(', ')}: using ${e.version}; update images/pins.json`,
    );
    return { name: e.name, version: e.version, sha256: e.sha256, source: 'index', entry: e };
  });
  // busybox first: the initramfs and the root disk take it from debs[0].
  debs.sort((a, b) => (a.name === BASE_PACKAGE ? -1 : b.name === BASE_PACKAGE ? 1 : 0));
  return {
    debs,
    installedKiB: closure.installedKiB,
    downloadBytes: closure.packages.reduce((s, p) => s + p.size, 0),
  };
}

/** What apt's candidate versions depend on: its lists and preferences (name, size, mtime). */
async function aptState(env: NodeJS.ProcessEnv): Promise<string | null> {
  const out: string[] = [`APT_CONFIG=${env.APT_CONFIG ?? ''}`];
  for (const dir of ['/var/lib/apt/lists', '/etc/apt/preferences.d']) {
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch {
      if (dir === '/var/lib/apt/lists') return null;
      continue;
    }
    for (const n of names) {
      const st = await stat(path.join(dir, n)).catch(() => null);
      if (st?.isFile()) out.push(`${dir}/${n} ${st.size} ${st.mtimeMs}`);
    }
  }
  const pref = await stat('/etc/apt/preferences').catch(() => null);
  if (pref !== null) out.push(`/etc/apt/preferences ${pref.size} ${pref.mtimeMs}`);
  return out.join('\n');
}

/**
 * planPackages from apt's index, remembered in `<cache>/plans/` under the
 * request and the state of apt's lists: reading and parsing the 50 MB index
 * costs 1.2 s idle (5 s on the loaded test machine), a remembered plan a
 * file read, so a rebuild with nothing new stays fast. `apt-get update`
 * changes the lists and so the key.
 */
export async function cachedPlan(
  cacheDir: string,
  requested: readonly string[],
  pins: Pins['packages'],
  maxMiB: number,
  env: NodeJS.ProcessEnv,
  progress?: Progress,
): Promise<PackagePlan> {
  const state = await aptState(env);
  const file =
    state === null
      ? null
      : path.join(
          cacheDir,
          'plans',
          `${sha256(JSON.stringify({ v: 1, requested, pins, maxMiB, state }))}.json`,
        );
  if (file !== null) {
    const saved = await readFile(file, 'utf8').catch(() => null);
    if (saved !== null) {
      const p = JSON.parse(saved) as PackagePlan & { warnings: string[] };
      for (const w of p.warnings) progress?.warn(w);
      return { debs: p.debs, installedKiB: p.installedKiB, downloadBytes: p.downloadBytes };
    }
  }
  const warnings: string[] = [];
  const before = progress?.warnings.length ?? 0;
  const plan = planPackages(await loadAptIndex(env), requested, pins, maxMiB, progress);
  warnings.push(...(progress?.warnings.slice(before) ?? []));
  if (file !== null) {
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.tmp-${process.pid}`;
    await writeFile(tmp, JSON.stringify({ ...plan, warnings }));
    await rename(tmp, file);
  }
  return plan;
}

/** apt names files name_version_arch.deb, with ':' (epochs) as %3a. */
const aptFileName = (e: IndexEntry): string =>
  `${e.name}_${e.version.replace(/:/g, '%3a')}_${e.arch}.deb`;

const exists = async (p: string): Promise<boolean> => {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
};

/** Packages per `apt-get download` run: a progress line each, one process for many files. */
const BATCH = 16;

/**
 * Every planned .deb as a file: index packages from the digest cache or
 * downloaded (batched `apt-get download`, checked against the index's
 * sha256), pinned ones through debian.ts's pin policy.
 */
export async function fetchPlan(
  plan: PackagePlan,
  o: {
    cacheDir: string;
    debian: DebianSource;
    pins: Pins['packages'];
    progress: Progress;
    env?: NodeJS.ProcessEnv;
  },
): Promise<DebInput[]> {
  const dir = path.join(o.cacheDir, 'debs', 'sha256');
  await mkdir(dir, { recursive: true });
  const file = (d: PlannedDeb): string => path.join(dir, `${d.sha256}.deb`);
  const missing: PlannedDeb[] = [];
  for (const d of plan.debs) if (d.source === 'index' && !(await exists(file(d)))) missing.push(d);
  if (missing.length > 0) {
    const total = missing.reduce((s, d) => s + d.entry.size, 0);
    o.progress.info(
      `downloading ${missing.length} of ${plan.debs.length} packages (${(total / 1048576).toFixed(1)} MiB); the rest are cached`,
    );
    let done = 0;
    for (let i = 0; i < missing.length; i += BATCH) {
      const batch = missing.slice(i, i + BATCH);
      await download(batch, dir, o.env);
      done += batch.reduce((s, d) => s + d.entry.size, 0);
      o.progress.info(
        `  ${Math.min(i + BATCH, missing.length)}/${missing.length} packages, ${(done / 1048576).toFixed(1)} MiB`,
      );
    }
  } else o.progress.info(`${plan.debs.length} packages, all cached`);

  const out: DebInput[] = [];
  for (const d of plan.debs) {
    if (d.source === 'pin') {
      const got = await o.debian.fetch(d.name, o.pins[d.name]);
      out.push(got);
      continue;
    }
    const pin = o.pins[d.name];
    out.push({
      kind: 'deb',
      name: d.name,
      version: d.version,
      sha256: d.sha256,
      pinned: false,
      pinnedVersion: pin?.version ?? null,
      origin: missing.includes(d) ? 'archive' : 'cache',
      file: file(d),
    });
  }
  return out;
}

/** One `apt-get download` into a private folder; each file moves into the cache once its digest matches. */
async function download(batch: PlannedDeb[], dir: string, env?: NodeJS.ProcessEnv): Promise<void> {
  const tmp = path.join(dir, `.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { recursive: true });
  try {
    const r = await run(
      'apt-get',
      ['download', '-q', ...batch.map((d) => `${d.name}=${d.version}`)],
      { cwd: tmp, env, allowFail: true, code: 'DOWNLOAD_FAILED' },
    );
    const got = new Set(await readdir(tmp));
    const failed = batch.filter((d) => !got.has(aptFileName(d.entry)));
    if (r.code !== 0 || failed.length > 0) {
      const tail = r.stderr.trim().split('\n').slice(-4).join(' / ');
      throw new MvirtError(
        'DOWNLOAD_FAILED',
        `cannot download ${(failed.length > 0 ? failed : batch).map((d) => `${d.name} ${d.version}`).join(', ')} with apt-get${tail === '' ? '' : ` (${tail})`}: check the network and the apt sources, run \`apt-get update\`, then build again (packages already downloaded stay cached)`,
      );
    }
    for (const d of batch) {
      const f = path.join(tmp, aptFileName(d.entry));
      const sum = await sha256File(f);
      if (sum !== d.sha256)
        throw new MvirtError(
          'DOWNLOAD_FAILED',
          `${d.name} ${d.version}: downloaded sha256 ${sum} is not the index's ${d.sha256}: run \`apt-get update\` and build again`,
        );
      await rename(f, path.join(dir, `${d.sha256}.deb`));
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
