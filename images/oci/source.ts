/**
 * Container image sources on local disk: an OCI image layout (a folder or a
 * tar of one) or a `docker save` archive (folder or tar). Either becomes the
 * same thing: the config blob and the layer blobs in order, each checked
 * against its digest.
 *
 *   OCI:  index.json → manifest (or an index: the linux/amd64 entry) → config + layers
 *   docker save: manifest.json [{Config, Layers}] ; config.rootfs.diff_ids are the layers' digests
 */
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createReadStream } from 'node:fs';
import * as z from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import { isRegistryReference, pullFirst } from '../../protocol/image.js';
import { sha256File } from '../hash.js';
import { entryParts, type LayerLimits } from './apply.js';
import { readTar, writeBody } from './tar.js';

export interface SourceLayer {
  digest: string;
  mediaType: string;
  size: number;
  file: string;
}

export interface ImageSource {
  format: 'oci-layout' | 'docker-save';
  configDigest: string;
  config: ImageConfigFile;
  layers: SourceLayer[];
}

const invalid = (msg: string, cause?: unknown): MvirtError =>
  new MvirtError('IMAGE_INVALID', msg, cause === undefined ? {} : { cause });

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const strs = z.array(z.string()).nullish();

/** The parts of the OCI image config mvirt uses (external format: other fields are allowed). */
export const ImageConfigFile = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z
    .object({
      Env: strs,
      WorkingDir: z.string().nullish(),
      User: z.string().nullish(),
      Entrypoint: strs,
      Cmd: strs,
    })
    .nullish(),
  rootfs: z.object({ type: z.literal('layers'), diff_ids: z.array(z.string().regex(DIGEST)) }),
});
export type ImageConfigFile = z.infer<typeof ImageConfigFile>;

const Descriptor = z.object({
  mediaType: z.string().optional(),
  digest: z.string().regex(DIGEST),
  size: z.number().int().nonnegative(),
  platform: z.object({ architecture: z.string(), os: z.string() }).optional(),
});
const OciIndex = z.object({ manifests: z.array(Descriptor).min(1) });
const OciManifest = z.object({ config: Descriptor, layers: z.array(Descriptor) });
const DockerManifest = z
  .array(z.object({ Config: z.string(), Layers: z.array(z.string()) }))
  .min(1);

async function readJson<T>(file: string, schema: z.ZodType<T>, what: string): Promise<T> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw invalid(`${what} cannot be read as JSON (${(err as Error).message})`, err);
  }
  const r = schema.safeParse(json);
  if (!r.success) throw invalid(`${what} is not what it should be: ${r.error.issues[0]?.message}`);
  return r.data;
}

/** A path inside the source folder; refused when it would leave it or is not a plain file. */
async function inside(dir: string, rel: string, what: string): Promise<string> {
  const parts = entryParts(what, rel);
  const file = path.join(dir, ...parts);
  const st = await lstat(file).catch(() => null);
  if (st === null || !st.isFile())
    throw invalid(`${what}: ${rel} is missing from the archive (or not a plain file)`);
  return file;
}

const blobPath = (dir: string, digest: string): string =>
  path.join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));

async function checkDigest(file: string, digest: string, what: string): Promise<void> {
  const got = `sha256:${await sha256File(file)}`;
  if (got !== digest)
    throw invalid(
      `${what}: content is ${got}, the archive says ${digest}: the archive is damaged; export it again`,
    );
}

async function fromOci(dir: string): Promise<ImageSource> {
  const index = await readJson(path.join(dir, 'index.json'), OciIndex, 'index.json');
  let desc = index.manifests.find(
    (m) =>
      m.platform === undefined ||
      (m.platform.architecture === 'amd64' && m.platform.os === 'linux'),
  );
  if (desc === undefined)
    throw invalid('index.json lists no linux/amd64 image: export the amd64 variant');
  let file = await inside(dir, blobPath('', desc.digest), 'index.json');
  await checkDigest(file, desc.digest, `manifest ${desc.digest}`);
  // An index in the index (multi-platform): one more step down.
  const raw = JSON.parse(await readFile(file, 'utf8')) as { manifests?: unknown };
  if (raw.manifests !== undefined) {
    const inner = await readJson(file, OciIndex, `index ${desc.digest}`);
    desc = inner.manifests.find(
      (m) => m.platform?.architecture === 'amd64' && m.platform.os === 'linux',
    );
    if (desc === undefined)
      throw invalid(`index ${file} lists no linux/amd64 image: export the amd64 variant`);
    file = await inside(dir, blobPath('', desc.digest), 'index.json');
    await checkDigest(file, desc.digest, `manifest ${desc.digest}`);
  }
  const m = await readJson(file, OciManifest, `manifest ${desc.digest}`);
  const configFile = await inside(dir, blobPath('', m.config.digest), 'manifest');
  await checkDigest(configFile, m.config.digest, `config ${m.config.digest}`);
  const config = await readJson(configFile, ImageConfigFile, `config ${m.config.digest}`);
  const layers: SourceLayer[] = [];
  for (const l of m.layers) {
    const f = await inside(dir, blobPath('', l.digest), `manifest ${desc.digest}`);
    await checkDigest(f, l.digest, `layer ${l.digest}`);
    layers.push({
      digest: l.digest,
      mediaType: l.mediaType ?? 'application/vnd.oci.image.layer.v1.tar',
      size: l.size,
      file: f,
    });
  }
  if (layers.length !== config.rootfs.diff_ids.length)
    throw invalid(
      `the manifest has ${layers.length} layers, the config ${config.rootfs.diff_ids.length}: the archive is damaged`,
    );
  return { format: 'oci-layout', configDigest: m.config.digest, config, layers };
}

async function fromDocker(dir: string): Promise<ImageSource> {
  const [entry] = await readJson(path.join(dir, 'manifest.json'), DockerManifest, 'manifest.json');
  const configFile = await inside(dir, entry!.Config, 'manifest.json');
  const configDigest = `sha256:${await sha256File(configFile)}`;
  const config = await readJson(configFile, ImageConfigFile, `config ${entry!.Config}`);
  if (entry!.Layers.length !== config.rootfs.diff_ids.length)
    throw invalid(
      `manifest.json has ${entry!.Layers.length} layers, the config ${config.rootfs.diff_ids.length}: the archive is damaged`,
    );
  const layers: SourceLayer[] = [];
  for (const [i, rel] of entry!.Layers.entries()) {
    const f = await inside(dir, rel, 'manifest.json');
    const digest = config.rootfs.diff_ids[i]!;
    await checkDigest(f, digest, `layer ${rel}`);
    layers.push({
      digest,
      mediaType: 'application/vnd.docker.image.rootfs.diff.tar',
      size: (await lstat(f)).size,
      file: f,
    });
  }
  return { format: 'docker-save', configDigest, config, layers };
}

/** Unpack an image archive (only folders and plain files) into `into`. */
async function unpackArchive(file: string, into: string, limits: LayerLimits): Promise<void> {
  let bytes = 0;
  const what = path.basename(file);
  await readTar(createReadStream(file, { highWaterMark: 1 << 20 }), what, async (h, body) => {
    const parts = entryParts(what, h.name);
    if (parts.length === 0) return;
    const dest = path.join(into, ...parts);
    if (h.type === 'directory') {
      await mkdir(dest, { recursive: true });
      return;
    }
    // An image archive holds JSON and blobs; links or devices in it are not ours to follow.
    if (h.type !== 'file' && h.type !== 'contiguous-file') return;
    bytes += h.size ?? 0;
    if (bytes > limits.maxBytes)
      throw new MvirtError(
        'IMAGE_TOO_LARGE',
        `${what} holds more than ${limits.maxBytes} bytes; import a smaller image or raise the limit (--max-bytes)`,
      );
    await mkdir(path.dirname(dest), { recursive: true });
    await writeBody(body, createWriteStream(dest, { flags: 'wx' }));
  });
}

/**
 * Read an image source: a folder as it is, a tar unpacked into `work` first.
 * Throws IMAGE_INVALID naming what is wrong (for a registry reference that
 * is not a local path, how to save it as an archive first).
 */
export async function openSource(
  given: string,
  work: string,
  limits: LayerLimits,
): Promise<ImageSource> {
  const src = path.resolve(given);
  const st = await lstat(src).catch(() => null);
  if (st === null)
    throw invalid(
      isRegistryReference(given)
        ? pullFirst(given)
        : `${src} does not exist: give an OCI image layout or a \`docker save\` archive (a folder or a tar)`,
    );
  let dir = src;
  if (st.isFile()) {
    dir = path.join(work, 'archive');
    await mkdir(dir, { recursive: true });
    await unpackArchive(src, dir, limits);
  } else if (!st.isDirectory())
    throw invalid(`${src} is neither an image folder nor an archive file`);
  const has = async (f: string): Promise<boolean> =>
    (await lstat(path.join(dir, f)).catch(() => null))?.isFile() === true;
  let source: ImageSource;
  if (await has('index.json')) source = await fromOci(dir);
  else if (await has('manifest.json')) source = await fromDocker(dir);
  else
    throw invalid(
      `${src} is neither an OCI image layout (index.json) nor a \`docker save\` archive (manifest.json)`,
    );
  const arch = source.config.architecture ?? 'amd64';
  if (arch !== 'amd64' || (source.config.os ?? 'linux') !== 'linux')
    throw invalid(
      `the image is for ${source.config.os ?? 'linux'}/${arch}; the µOS runs linux/amd64 images`,
    );
  return source;
}
