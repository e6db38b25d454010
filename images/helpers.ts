/**
 * Programs of the µOS that are compiled when an image is built, from
 * initramfs/src/ with the C compiler of Debian's build-essential: static, so
 * that they need nothing from the guest's libraries.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { INITRAMFS_DIR } from './paths.js';
import { run } from './run.js';

export interface Helper {
  src: string;
  /** Where it goes in the root file system. */
  dest: string;
}

/** The agent's vsock dialer and relay (guest-agent/platform/vsock.ts says why). */
export const VSOCK_HELPER: Helper = {
  src: path.join(INITRAMFS_DIR, 'src', 'vsock-connect.c'),
  dest: 'usr/libexec/mvirt/vsock-connect',
};

/** Runs a job of an imported container image inside its root (initramfs/src/image-exec.c). */
export const IMAGE_EXEC_HELPER: Helper = {
  src: path.join(INITRAMFS_DIR, 'src', 'image-exec.c'),
  /** Where it goes in the root file system (the agent's IMAGE_EXEC). */
  dest: 'usr/libexec/mvirt/image-exec',
};

/** The pseudo-terminal wrapper of tty jobs (its source says why it is C; guest-agent/tty.ts runs it). */
export const PTY_HELPER: Helper = {
  src: path.join(INITRAMFS_DIR, 'src', 'mvirt-pty.c'),
  dest: 'usr/libexec/mvirt/mvirt-pty',
};

/** Forks and execs jobs for the agent, which then never forks itself (initramfs/src/mvirt-launch.c). */
export const LAUNCH_HELPER: Helper = {
  src: path.join(INITRAMFS_DIR, 'src', 'mvirt-launch.c'),
  /** The agent's LAUNCH_HELPER (guest-agent/platform/launcher.ts). */
  dest: 'usr/libexec/mvirt/mvirt-launch',
};

/** Every helper an image carries. */
export const HELPERS: readonly Helper[] = [
  VSOCK_HELPER,
  IMAGE_EXEC_HELPER,
  PTY_HELPER,
  LAUNCH_HELPER,
];

/**
 * The sha256 (hex) of what a helper is built from: its source and the
 * headers beside it that the helpers share (relay.h), so that a build named
 * by it is made anew when either changes.
 */
export function helperHash(helper: Helper): string {
  const h = createHash('sha256').update(readFileSync(helper.src));
  const dir = path.dirname(helper.src);
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith('.h'))
    .sort())
    h.update(f).update(readFileSync(path.join(dir, f)));
  return h.digest('hex');
}

/** The compiler's arguments that build `helper` into `outFile`. */
export const helperCcArgs = (helper: Helper, outFile: string): string[] => [
  '-static',
  '-Os',
  '-s',
  '-Wall',
  '-Wextra',
  '-Werror',
  '-o',
  outFile,
  helper.src,
];

export async function buildHelper(helper: Helper, outFile: string): Promise<void> {
  await run('cc', helperCcArgs(helper, outFile), { code: 'BUILD_FAILED' });
}

export const buildVsockHelper = (outFile: string): Promise<void> =>
  buildHelper(VSOCK_HELPER, outFile);

export const buildImageExecHelper = (outFile: string): Promise<void> =>
  buildHelper(IMAGE_EXEC_HELPER, outFile);
