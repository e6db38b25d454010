/**
 * Container images made by tests and the bench: layer tars (any entry,
 * hostile ones too), OCI image layouts and `docker save` archives of them.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tarStream from 'tar-stream';

export interface Entry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  body?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  /** Header size that differs from the body (a lying header). */
  size?: number;
}

/** A tar archive of `entries`, in order. */
export async function makeTar(entries: readonly Entry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? (e.body !== undefined ? 'file' : 'directory');
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        {
          name: e.name,
          type,
          mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          mtime: new Date(1_700_000_000_000),
          ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
          ...(e.size !== undefined ? { size: e.size } : {}),
        },
        type === 'file' ? (e.body ?? '') : undefined,
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

export interface ImageSpec {
  layers: Buffer[];
  env?: string[];
  workingDir?: string;
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

function configOf(s: ImageSpec): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {
        Env: s.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        WorkingDir: s.workingDir ?? '',
        User: s.user ?? '',
        Entrypoint: s.entrypoint ?? null,
        Cmd: s.cmd ?? ['/bin/sh'],
      },
      rootfs: { type: 'layers', diff_ids: s.layers.map((l) => `sha256:${sha(l)}`) },
    }),
  );
}

/** An OCI image layout in `dir` (gzip layers unless `gzip` is false). Returns the manifest digest. */
export async function writeOciLayout(dir: string, s: ImageSpec, gzip = true): Promise<string> {
  const blobs = path.join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const put = async (b: Buffer): Promise<{ digest: string; size: number }> => {
    const h = sha(b);
    await writeFile(path.join(blobs, h), b);
    return { digest: `sha256:${h}`, size: b.length };
  };
  const config = await put(configOf(s));
  const layers = [];
  for (const l of s.layers) {
    const blob = gzip ? gzipSync(l, { level: 1 }) : l;
    layers.push({
      mediaType: `application/vnd.oci.image.layer.v1.tar${gzip ? '+gzip' : ''}`,
      ...(await put(blob)),
    });
  }
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers,
      }),
    ),
  );
  await writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest }],
    }),
  );
  return manifest.digest;
}

/** A `docker save` archive (the classic layout: <id>/layer.tar, <config id>.json, manifest.json). */
export async function dockerSaveTar(s: ImageSpec): Promise<Buffer> {
  const config = configOf(s);
  const cid = sha(config);
  const entries: Entry[] = [{ name: `${cid}.json`, body: config }];
  const names: string[] = [];
  for (const l of s.layers) {
    const id = sha(l);
    entries.push({ name: `${id}/`, type: 'directory' }, { name: `${id}/layer.tar`, body: l });
    names.push(`${id}/layer.tar`);
  }
  entries.push({
    name: 'manifest.json',
    body: JSON.stringify([{ Config: `${cid}.json`, RepoTags: ['test:latest'], Layers: names }]),
  });
  return makeTar(entries);
}
