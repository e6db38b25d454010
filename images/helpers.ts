/**
 * Programs of the µOS that are compiled when an image is built, from
 * initramfs/src/ with the C compiler of Debian's build-essential: static, so
 * that they need nothing from the guest's libraries.
 */
import path from 'node:path';
import { INITRAMFS_DIR } from './paths.js';
import { run } from './run.js';

/** The agent's vsock dialer and relay (guest-agent/platform/vsock.ts says why). */
export const VSOCK_HELPER = {
  src: path.join(INITRAMFS_DIR, 'src', 'vsock-connect.c'),
  /** Where it goes in the root file system (the agent's VSOCK_HELPER). */
  dest: 'usr/libexec/mvirt/vsock-connect',
};

export async function buildVsockHelper(outFile: string): Promise<void> {
  await run(
    'cc',
    ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', outFile, VSOCK_HELPER.src],
    { code: 'BUILD_FAILED' },
  );
}

/** Runs a job of an imported container image inside its root (initramfs/src/image-exec.c). */
export const IMAGE_EXEC_HELPER = {
  src: path.join(INITRAMFS_DIR, 'src', 'image-exec.c'),
  /** Where it goes in the root file system (the agent's IMAGE_EXEC). */
  dest: 'usr/libexec/mvirt/image-exec',
};

export async function buildImageExecHelper(outFile: string): Promise<void> {
  await run(
    'cc',
    ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', outFile, IMAGE_EXEC_HELPER.src],
    { code: 'BUILD_FAILED' },
  );
}
