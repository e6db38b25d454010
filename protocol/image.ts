/**
 * What an imported container image tells the agent (image.json at the top of
 * its root disk, written by images/oci/import.ts, read by the agent at
 * start): the defaults of every job in that image. Validated on both sides.
 */
import * as z from 'zod';

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
