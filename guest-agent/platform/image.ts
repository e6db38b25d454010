/**
 * An imported container image (protocol/image.ts): the µOS's rcS mounted its
 * disk and made the root jobs run in; this reads its defaults and wraps a
 * job's argv in image-exec (initramfs/src/image-exec.c), which chroots there.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  GUEST_IMAGE_MOUNT,
  GUEST_IMAGE_ROOT,
  IMAGE_RUNTIME_FILE,
  ImageRuntime,
} from '../../protocol/image.js';

export const IMAGE_EXEC = '/usr/libexec/mvirt/image-exec';

/** The image's defaults; null when this VM runs no imported image (or it cannot be read). */
export function readImageRuntime(
  file = path.join(GUEST_IMAGE_MOUNT, IMAGE_RUNTIME_FILE),
  warn: (msg: string) => void = (m) => process.stderr.write(`${m}\n`),
): ImageRuntime | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  try {
    return ImageRuntime.parse(JSON.parse(text));
  } catch (err) {
    warn(
      `mvirt-agent: ${file} is not an image config (${(err as Error).message}): jobs run in the µOS`,
    );
    return null;
  }
}

/** argv that runs `argv` in the image's root, as its user, in `cwd` there. */
export function inImage(
  image: ImageRuntime,
  argv: readonly string[],
  cwd: string | undefined,
  root = GUEST_IMAGE_ROOT,
): string[] {
  return [IMAGE_EXEC, root, String(image.uid), String(image.gid), cwd ?? image.workingDir, ...argv];
}
