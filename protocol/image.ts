/**
 * What an imported container image tells the agent (image.json at the top of
 * its root disk, written by images/oci/import.ts, read by the agent at
 * start): the defaults of every job in that image. Validated on both sides.
 * And the image.* RPCs: their params, the image records they answer with.
 */
import * as z from 'zod';
import { Name } from './names.js';
import { DRY_RUN } from './plan.js';
import { Empty } from './records.js';

export const IMAGE_RUNTIME_SCHEMA = 1;
/** On the image's root disk: `root/` (the image's files) and this file. */
export const IMAGE_RUNTIME_FILE = 'image.json';
export const IMAGE_ROOT_DIR = 'root';
/** Where the µOS (rcS) mounts the image disk, read-only. */
export const GUEST_IMAGE_MOUNT = '/run/mvirt/image';
/** The writable root (tmpfs overlay on the disk's root/) that jobs are chrooted into. */
export const GUEST_IMAGE_ROOT = '/run/mvirt/image-root';
/** The kernel argument that tells the µOS its VM has an image disk after its own. */
export const IMAGE_CMDLINE_FLAG = 'mvirt.image=1';

export const ImageRuntime = z.strictObject({
  schema: z.literal(IMAGE_RUNTIME_SCHEMA),
  /** The image config's Env, as a map (later entries win). */
  env: z.record(z.string().max(4096), z.string().max(65536)),
  /** The image config's WorkingDir ('/' when it had none). */
  workingDir: z.string().startsWith('/').max(4096),
  /** The image config's User as written, and what it resolved to in the image's /etc/passwd. */
  user: z.string().max(256),
  uid: z
    .number()
    .int()
    .min(0)
    .max(2 ** 32 - 2),
  gid: z
    .number()
    .int()
    .min(0)
    .max(2 ** 32 - 2),
  /** Prepended to every job's argv (as `docker run IMAGE ARGV…` does). */
  entrypoint: z.array(z.string().max(65536)).max(4096),
  /** Recorded; a job's argv (never empty) takes its place, as `docker run`'s arguments do. */
  cmd: z.array(z.string().max(65536)).max(4096),
});
export type ImageRuntime = z.infer<typeof ImageRuntime>;

// ------------------------------------------------------------- image.* RPCs

/** A name component of an image reference (the distribution spec's grammar). */
const REF_PART = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const REFERENCE = new RegExp(
  `^(?<host>[A-Za-z0-9.-]+(?::[0-9]+)?/)?${REF_PART}(?:/${REF_PART})*` +
    '(?<tag>:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?<digest>@sha256:[0-9a-f]{64})?$',
);

/**
 * A container registry reference rather than a local archive: `docker://…`,
 * a name with a tag or digest (`python:3.12-slim`, `app@sha256:…`), or one
 * under a registry host (`ghcr.io/org/app`). mvirt imports local archives
 * only; callers say so with `pullFirst`.
 */
export function isRegistryReference(s: string): boolean {
  const ref = s.replace(/^docker:\/\//, '');
  if (ref !== s) return ref.length > 0;
  const m = REFERENCE.exec(s);
  if (m === null) return false;
  const host = m.groups?.host?.slice(0, -1);
  return (
    m.groups?.tag !== undefined ||
    m.groups?.digest !== undefined ||
    (host !== undefined && (host.includes('.') || host.includes(':') || host === 'localhost'))
  );
}

/** What to do with a registry reference: make a local archive of it first. */
export function pullFirst(s: string): string {
  const ref = s.replace(/^docker:\/\//, '');
  return `${s} is a registry reference; mvirt pulls from none: save it first (\`docker save -o app.tar ${ref}\` or \`skopeo copy docker://${ref} oci-archive:app.tar\`)`;
}

/** A plain file name in mvirtd's --image-import-dir (never a path). */
export const ImportFileName = z
  .string()
  .min(1)
  .max(255)
  .refine((s) => !isRegistryReference(s), {
    error: (iss) => pullFirst(String(iss.input)),
    abort: true,
  })
  .regex(/^[A-Za-z0-9][A-Za-z0-9._+-]*$/, 'a plain file name: letters, digits, . _ + -')
  .refine((s) => !s.includes('..'), "must not contain '..'");

export const ImageRecord = z.strictObject({
  name: z.string(),
  kind: z
    .enum(['built', 'imported'])
    .describe('built from a recipe, or imported from a container image'),
  /** The cache key of its inputs (built) or of its layers and config (imported). */
  key: z.string(),
  sizeBytes: z.number().int().nonnegative().describe('sum of its files'),
  builtAt: z.string(),
  kernel: z.string().describe('kernel release'),
  /** Imported: the µOS image it boots with, and the sha256 of its root disk. */
  base: z.string().optional(),
  rootDigest: z.string().optional(),
  usedBy: z
    .strictObject({ vms: z.array(z.string()), pools: z.array(z.string()) })
    .describe('VMs (ids) and pools (names) made from it: image.delete is refused while any'),
});
export type ImageRecord = z.infer<typeof ImageRecord>;

/** image.get: the record and its manifest.json as written (images/manifest.ts). */
export const ImageDetails = z.strictObject({
  image: ImageRecord,
  manifest: z.record(z.string(), z.unknown()),
});
export type ImageDetails = z.infer<typeof ImageDetails>;

export const IMAGE_PARAMS = {
  'image.list': z.strictObject({}).optional(),
  'image.get': z.strictObject({ image: Name }),
  'image.delete': z.strictObject({ ...DRY_RUN, image: Name }),
  'image.build': z.strictObject({
    ...DRY_RUN,
    /** An image recipe (images/README.md); validated by the builder (RECIPE_INVALID). */
    recipe: z.record(z.string(), z.unknown()),
    /** Rebuild from scratch instead of reusing cached outputs. */
    noCache: z.boolean().optional(),
  }),
  'image.import': z.strictObject({
    ...DRY_RUN,
    /** A file (OCI layout tar or `docker save` archive) in mvirtd's --image-import-dir. */
    file: ImportFileName,
    name: Name,
    /** The µOS image it boots with (default "default"). */
    base: Name.optional(),
  }),
} as const;

export const IMAGE_RESULTS = {
  'image.list': z.strictObject({ images: z.array(ImageRecord) }),
  'image.get': ImageDetails,
  'image.delete': Empty,
  'image.build': ImageRecord,
  'image.import': ImageRecord,
} as const;
