/**
 * Container image import (images/oci/): a 100 MiB OCI image (two gzip
 * layers: 40 MiB of small text files, 60 MiB of incompressible data, the
 * second also whiting out a file of the first) imported with an empty cache,
 * side by side with plain `tar -xzf` of the same layer blobs into a folder,
 * in the same run. The import also verifies every digest, applies the
 * whiteouts, checks every entry and makes the squashfs root disk; the ratio
 * is import ÷ tar (target ≤ 3). A re-import with nothing new is timed too.
 * Each figure is the median of MVIRT_BENCH_RUNS runs (default 3).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { importImage } from '../images/oci/import.js';
import { writeFakeImage } from '../harness/daemon.js';
import { makeTar, writeOciLayout, type Entry } from '../test/support/oci.js';
import { median, type BenchRow } from './lib.js';

const RUNS = Number(process.env.MVIRT_BENCH_RUNS ?? 3);
const MiB = 1024 * 1024;

async function layers(): Promise<Buffer[]> {
  const text: Entry[] = [{ name: 'usr/' }, { name: 'usr/share/' }];
  const line = 'mvirt bench: a line of text that compresses like source code does.\n';
  for (let i = 0; i < 2000; i++) {
    if (i % 100 === 0) text.push({ name: `usr/share/d${i / 100}/` });
    text.push({
      name: `usr/share/d${Math.floor(i / 100)}/f${i}.txt`,
      body: line.repeat(Math.round((20 * 1024) / line.length)),
    });
  }
  const data: Entry[] = [{ name: 'opt/' }, { name: 'usr/share/d0/.wh.f0.txt', body: '' }];
  for (let i = 0; i < 60; i++) data.push({ name: `opt/blob${i}.bin`, body: randomBytes(MiB) });
  return [await makeTar(text), await makeTar(data)];
}

const secs = (ms: number): number => Math.round(ms) / 1000;

export default async function bench(): Promise<BenchRow[]> {
  const dir = await mkdtemp(path.join(tmpdir(), 'mvirt-bench-oci-'));
  try {
    const ls = await layers();
    const total = ls.reduce((s, l) => s + l.length, 0);
    const oci = path.join(dir, 'oci');
    await writeOciLayout(oci, { layers: ls });
    const index = JSON.parse(await readFile(path.join(oci, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    const blob = (d: string): string => path.join(oci, 'blobs', 'sha256', d.slice(7));
    const manifest = JSON.parse(await readFile(blob(index.manifests[0]!.digest), 'utf8')) as {
      layers: { digest: string }[];
    };
    const images = path.join(dir, 'images');
    await writeFakeImage(images); // a stand-in µOS image: the importer only links its files

    const tarMs: number[] = [];
    const importMs: number[] = [];
    const reimportMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      // Side by side: tar, then the import, each on a cold target.
      const out = path.join(dir, `tar-${i}`);
      await mkdir(out);
      let t0 = performance.now();
      for (const l of manifest.layers) execFileSync('tar', ['-xzf', blob(l.digest), '-C', out]);
      tarMs.push(performance.now() - t0);
      await rm(out, { recursive: true, force: true });

      const cache = path.join(dir, `cache-${i}`);
      t0 = performance.now();
      await importImage({
        source: oci,
        name: `bench-${i}`,
        imagesDir: images,
        cacheDir: cache,
        log: () => undefined,
      });
      importMs.push(performance.now() - t0);
      t0 = performance.now();
      const again = await importImage({
        source: oci,
        name: `bench-${i}`,
        imagesDir: images,
        cacheDir: cache,
        log: () => undefined,
      });
      reimportMs.push(performance.now() - t0);
      if (!again.fromCache) throw new Error('the re-import did not come from the cache');
      await rm(cache, { recursive: true, force: true });
      await rm(path.join(images, `bench-${i}`), { recursive: true, force: true });
    }
    const tar = median(tarMs);
    const imp = median(importMs);
    const range = (xs: number[]): string => `${secs(Math.min(...xs))}–${secs(Math.max(...xs))} s`;
    return [
      {
        name: 'oci import: tar -xzf of the layers',
        value: secs(tar),
        unit: 's',
        note: `${(total / MiB).toFixed(0)} MiB in 2 layers; runs ${range(tarMs)}`,
      },
      {
        name: 'oci import: import (cold cache)',
        value: secs(imp),
        unit: 's',
        ratio: imp / tar,
        target: '<= 3',
        note: `÷ tar -x = ${(imp / tar).toFixed(2)}; digests, whiteouts, checks, squashfs; runs ${range(importMs)}`,
      },
      {
        name: 'oci import: re-import, nothing new',
        value: secs(median(reimportMs)),
        unit: 's',
        note: `digests checked, root disk from the cache; runs ${range(reimportMs)}`,
      },
    ];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
