/**
 * Jobs under a pseudo-terminal (exec {tty}). The pty is the µOS's mvirt-pty
 * (initramfs/src/mvirt-pty.c says why it is a C helper): a tty job's argv is
 * wrapped as `mvirt-pty --cols C --rows R --size-file F -- CMD…` and spawned
 * like any other job, so it runs however jobs are spawned, in the job's
 * group, with its limits, timeout and signals.
 *
 * A resize writes "COLS ROWS" into the job's size file, then sends SIGWINCH
 * to the job's process group, which holds the helper alone (the command runs
 * in a session of its own): the helper reads the file and sets the size on
 * the pty. A file and a signal, not a side channel, because a side channel
 * would be one more descriptor every way of spawning a job must pass on.
 */
import path from 'node:path';
import type { TtySize } from '../protocol/tty.js';
import type { Platform } from './platform/types.js';

/** Where the µOS image puts the helper (images/helpers.ts PTY_HELPER). */
export const PTY_HELPER = '/usr/libexec/mvirt/mvirt-pty';
/** One size file per running tty job, named by its job id. */
export const TTY_SIZE_DIR = '/run/mvirt/tty';

/** A job id (protocol AgentId: no '/', not starting with '.') is a safe file name. */
const sizeFile = (platform: Platform, jobId: string) => path.join(platform.tty.sizeDir, jobId);

/** The argv that runs `argv` under a pty of `size`. */
export function ttyArgv(
  platform: Platform,
  jobId: string,
  size: TtySize,
  argv: readonly string[],
): string[] {
  return [
    platform.tty.helper,
    '--cols',
    String(size.cols),
    '--rows',
    String(size.rows),
    '--size-file',
    sizeFile(platform, jobId),
    '--',
    ...argv,
  ];
}

/** Give a running tty job (its helper leads process group `pid`) a new size; false: it is gone. */
export async function resizeTty(
  platform: Platform,
  jobId: string,
  pid: number,
  size: TtySize,
): Promise<boolean> {
  await platform.writeText(sizeFile(platform, jobId), `${size.cols} ${size.rows}\n`);
  return platform.killGroup(pid, 'SIGWINCH');
}

/** The size file of an ended job goes with it. */
export function forgetTty(platform: Platform, jobId: string): Promise<void> {
  return platform.removeFile(sizeFile(platform, jobId));
}
