/**
 * manifest.json of a built image: what the VM backends need to boot it, and
 * every input and output with its sha256 (provenance). The schema is the
 * contract with host/ (hypervisor backends, image store): read it with
 * `readManifest`.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { MvirtError } from '../protocol/errors.js';

export const MANIFEST_FILE = 'manifest.json';
export const MANIFEST_SCHEMA = 1;

const sha = z.string().regex(/^[0-9a-f]{64}$/);

export const ManifestInput = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('deb'),
    role: z.enum(['kernel', 'busybox', 'package']),
    name: z.string(),
    version: z.string(),
    sha256: sha,
    pinned: z.boolean(),
    pinnedVersion: z.string().nullable(),
  }),
  z.strictObject({
    kind: z.literal('file'),
    role: z.enum([
      'agent',
      /** The Node runtime the agent was built on (guest-agent/build.mjs), `path` its source. */
      'agent-runtime',
      'file',
      'initramfs',
      'kernel-config',
      'pins',
      'builder',
      'custom-kernel',
    ]),
    path: z.string(),
    dest: z.string().optional(),
    version: z.string().optional(),
    sha256: sha,
  }),
]);
export type ManifestInput = z.infer<typeof ManifestInput>;

export const ManifestOutput = z.strictObject({
  file: z.string(),
  sha256: sha,
  size: z.number().int(),
});
export type ManifestOutput = z.infer<typeof ManifestOutput>;

/**
 * An imported container image (images/oci/): its files are a second squashfs
 * disk (`file`, attached right after `disk`), which the µOS mounts and runs
 * jobs chrooted in. Every digest of the source is recorded.
 */
export const ManifestContainer = z.strictObject({
  file: z.string(),
  /** sha256 of `file`: the same root gives the same digest, whatever archive it came from. */
  rootDigest: sha,
  source: z.strictObject({
    format: z.enum(['oci-layout', 'docker-save']),
    /** The archive or folder name it was imported from. */
    name: z.string(),
  }),
  /** The µOS image whose kernel, initramfs and root disk it boots with. */
  base: z.strictObject({ name: z.string(), key: z.string() }),
  config: z.strictObject({
    digest: z.string(),
    env: z.array(z.string()),
    workingDir: z.string(),
    user: z.string(),
    entrypoint: z.array(z.string()),
    cmd: z.array(z.string()),
  }),
  layers: z.array(
    z.strictObject({ digest: z.string(), mediaType: z.string(), size: z.number().int() }),
  ),
});
export type ManifestContainer = z.infer<typeof ManifestContainer>;

export const Manifest = z.strictObject({
  schema: z.literal(MANIFEST_SCHEMA),
  name: z.string(),
  /** Hash of all declared inputs: the output cache key. */
  key: z.string(),
  kernel: z.strictObject({
    file: z.string(),
    release: z.string(),
    source: z.enum(['debian', 'custom']),
  }),
  initrd: z.strictObject({ file: z.string(), compression: z.literal('lz4') }),
  /** The root filesystem: attach read-only as a virtio-blk disk (init finds it by its squashfs magic). */
  disk: z.strictObject({
    file: z.string(),
    format: z.literal('squashfs'),
    compression: z.string(),
    readOnly: z.literal(true),
    bus: z.literal('virtio-blk'),
  }),
  /** Default kernel arguments; the backend appends per-VM `mvirt.*` keys. */
  cmdline: z.string(),
  /** What the image was tested with; backends should use these. */
  boot: z.strictObject({
    machine: z.enum(['pc', 'q35', 'microvm']),
    /** virtio-pci for pc/q35, virtio-mmio for microvm. */
    transport: z.enum(['virtio-pci', 'virtio-mmio']),
    serialConsole: z.literal('ttyS0'),
    /** A shell reads the console (recipe `console`); images built before it had none. */
    consoleShell: z.boolean().default(false),
    agentPort: z.string(),
    minMemoryMiB: z.number().int(),
    testedAccel: z.array(z.string()),
  }),
  inputs: z.array(ManifestInput),
  outputs: z.array(ManifestOutput),
  sizes: z.strictObject({ kernelPlusInitrd: z.number().int(), total: z.number().int() }),
  modules: z.array(z.string()),
  build: z.strictObject({
    at: z.string(),
    seconds: z.number(),
    fromCache: z.boolean(),
    sourceDateEpoch: z.number().int(),
    builderVersion: z.number().int(),
  }),
  warnings: z.array(z.string()),
  container: ManifestContainer.optional(),
});
export type Manifest = z.infer<typeof Manifest>;

/** Read and validate `<imageDir>/manifest.json`. */
export async function readManifest(imageDir: string): Promise<Manifest> {
  const file = path.join(imageDir, MANIFEST_FILE);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new MvirtError(
      'IMAGE_NOT_FOUND',
      `no image manifest at ${file}: build it with \`mvirt image build\``,
      {
        cause: err,
      },
    );
  }
  const r = Manifest.safeParse(json);
  if (!r.success)
    throw new MvirtError('IMAGE_NOT_FOUND', `${file} is not a valid manifest: ${r.error.message}`);
  return r.data;
}

/** The absolute paths of an image's boot files. */
export function bootFiles(
  imageDir: string,
  m: Manifest,
): { kernel: string; initrd: string; disk: string; imageDisk?: string } {
  return {
    kernel: path.join(imageDir, m.kernel.file),
    initrd: path.join(imageDir, m.initrd.file),
    disk: path.join(imageDir, m.disk.file),
    ...(m.container ? { imageDisk: path.join(imageDir, m.container.file) } : {}),
  };
}
