/**
 * Sparse file copies: a VM's RAM file beside its saved state, a volume's file
 * into a VM snapshot's folder while the VM is paused, and a snapshot's disk
 * copy into a fork's new volume. `cp --sparse=always`: coreutils skips the
 * holes of the source (pages or blocks never written) with SEEK_DATA and
 * writes zero blocks as holes; Node has no such call.
 */
import { execFile as execFileCb } from 'node:child_process';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFile = promisify(execFileCb);

/** The argv of a copy (dry runs show it); `dst` must not exist yet (cp would overwrite it). */
export const copySparseArgv = (src: string, dst: string): string[] => [
  'cp',
  '--sparse=always',
  '--',
  src,
  dst,
];

/** Copy `src` to `dst`, holes kept as holes. */
export async function copySparse(src: string, dst: string): Promise<void> {
  const [bin, ...args] = copySparseArgv(src, dst);
  await execFile(bin!, args);
}

/**
 * The copy, then flushed to disk: cp never calls fsync, and a record naming
 * the file must not be committed while its data is still in the page cache.
 */
export async function copySparseDurable(src: string, dst: string): Promise<void> {
  await copySparse(src, dst);
  const fh = await open(dst, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
