/**
 * Pinned Debian inputs (the kernel, the default image's base libraries):
 * downloads with `apt-get download` into the cache, checked against
 * images/pins.json. A recipe's closure is resolved in deb-index.ts and
 * fetched by digest in deb-plan.ts.
 *
 * Debian's archive keeps only the current version of a package, so a pin will
 * one day vanish. Policy: pinned version from the cache → pinned version from
 * the archive → current version from the archive with a warning. The build
 * never breaks because the archive moved on; the manifest says what was used.
 */
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { MvirtError } from '../protocol/errors.js';
import { sha256File } from './hash.js';
import type { Progress } from './progress.js';
import { run } from './run.js';

const Pin = z.strictObject({ version: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/) });
export const Pins = z.strictObject({
  comment: z.string().optional(),
  kernels: z.record(z.string(), z.strictObject({ package: z.string(), ...Pin.shape })),
  packages: z.record(z.string(), Pin),
});
export type Pins = z.infer<typeof Pins>;

export async function loadPins(file: string): Promise<Pins> {
  const r = Pins.safeParse(JSON.parse(await readFile(file, 'utf8')));
  if (!r.success) throw new MvirtError('BUILD_FAILED', `${file}: ${r.error.message}`);
  return r.data;
}

/** One Debian package as used by a build (a manifest input). */
export interface DebInput {
  kind: 'deb';
  name: string;
  version: string;
  sha256: string;
  /** The version used is the pinned one. */
  pinned: boolean;
  pinnedVersion: string | null;
  origin: 'cache' | 'archive';
  file: string;
}

/** apt encodes ':' (epochs) as %3a in file names. */
const debFilePrefix = (name: string, version: string): string =>
  `${name}_${version.replace(/:/g, '%3a')}_`;

export interface DebianSource {
  fetch(name: string, pin: { version: string; sha256: string } | undefined): Promise<DebInput>;
  /** The real kernel package behind a metapackage (linux-image-amd64 → linux-image-6.1.0-NN-amd64). */
  currentKernelPackage(meta: string): Promise<string>;
}

export function createDebianSource(cacheDir: string, progress: Progress): DebianSource {
  const debDir = path.join(cacheDir, 'debs');

  async function findCached(name: string, version: string): Promise<string | null> {
    await mkdir(debDir, { recursive: true });
    const prefix = debFilePrefix(name, version);
    const hit = (await readdir(debDir)).find((f) => f.startsWith(prefix) && f.endsWith('.deb'));
    return hit === undefined ? null : path.join(debDir, hit);
  }

  /** Download into a private temp folder, then move into the cache (atomic for concurrent builds). */
  async function download(spec: string): Promise<string | null> {
    const tmp = path.join(debDir, `.tmp-${process.pid}-${Date.now()}`);
    await mkdir(tmp, { recursive: true });
    try {
      const r = await run('apt-get', ['download', '-q', spec], {
        cwd: tmp,
        allowFail: true,
        code: 'DOWNLOAD_FAILED',
      });
      if (r.code !== 0) return null;
      const got = (await readdir(tmp)).filter((f) => f.endsWith('.deb'));
      if (got.length !== 1 || got[0] === undefined) return null;
      const dest = path.join(debDir, got[0]);
      await rename(path.join(tmp, got[0]), dest);
      return dest;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  async function candidateVersion(name: string): Promise<string> {
    const r = await run('apt-cache', ['show', '--no-all-versions', name], { allowFail: true });
    const v = /^Version: (.+)$/m.exec(r.stdout.toString())?.[1];
    if (r.code !== 0 || v === undefined)
      throw new MvirtError(
        'DOWNLOAD_FAILED',
        `package "${name}" is not in the apt archive: check the name, or run \`apt-get update\``,
      );
    return v;
  }

  const input = async (
    name: string,
    file: string,
    pin: { version: string } | undefined,
    origin: DebInput['origin'],
  ): Promise<DebInput> => {
    const version = (await run('dpkg-deb', ['-f', file, 'Version'])).stdout.toString().trim();
    return {
      kind: 'deb',
      name,
      version,
      sha256: await sha256File(file),
      pinned: pin !== undefined && pin.version === version,
      pinnedVersion: pin?.version ?? null,
      origin,
      file,
    };
  };

  return {
    async fetch(name, pin) {
      if (pin !== undefined) {
        const cached = await findCached(name, pin.version);
        if (cached !== null && (await sha256File(cached)) === pin.sha256)
          return input(name, cached, pin, 'cache');
        const got = await download(`${name}=${pin.version}`);
        if (got !== null) {
          const sum = await sha256File(got);
          if (sum !== pin.sha256) {
            await rm(got, { force: true });
            throw new MvirtError(
              'DOWNLOAD_FAILED',
              `${name} ${pin.version}: sha256 ${sum} does not match the pin ${pin.sha256}: the download is corrupt or images/pins.json is wrong`,
            );
          }
          return input(name, got, pin, 'archive');
        }
      }
      const current = await candidateVersion(name);
      const cached = await findCached(name, current);
      if (pin !== undefined)
        progress.warn(
          `${name} ${pin.version} (pinned) is gone from the archive and not cached: using the current ${current}; update images/pins.json`,
        );
      if (cached !== null) return input(name, cached, pin, 'cache');
      const got = await download(`${name}=${current}`);
      if (got === null)
        throw new MvirtError(
          'DOWNLOAD_FAILED',
          `cannot download ${name} ${current} with apt-get: check the network and run \`apt-get update\``,
        );
      return input(name, got, pin, 'archive');
    },

    async currentKernelPackage(meta) {
      const r = await run('apt-cache', ['depends', meta], { allowFail: true });
      const dep = /Depends: (linux-image-\S+)/.exec(r.stdout.toString())?.[1];
      if (r.code !== 0 || dep === undefined)
        throw new MvirtError(
          'DOWNLOAD_FAILED',
          `cannot resolve kernel metapackage ${meta}: run \`apt-get update\``,
        );
      return dep;
    },
  };
}
