/**
 * The µOS's C helpers (initramfs/src/) built for this host, as the image
 * builder builds them: the fake VMMs' guests dial their hybrid vsock through
 * the same relay a real guest uses (vsock-connect in its `unix:PATH` mode: no
 * AF_VSOCK here), and agent tests run tty jobs under the real mvirt-pty.
 * Cached by the source's hash under test-output/; concurrent builders each
 * write their own file and rename it into place.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import {
  buildHelper,
  helperCcArgs,
  helperHash,
  LAUNCH_HELPER,
  VSOCK_HELPER,
  type Helper,
} from '../images/helpers.js';
import { REPO } from './paths.js';

/** Where a helper's build for this host goes (named by the hash of what it is built from). */
function builtPath(helper: Helper): string {
  const hash = helperHash(helper);
  const name = path.basename(helper.dest);
  return path.join(REPO, 'test-output', 'bin', `${name}-${hash.slice(0, 12)}`);
}

/** The helper built for this host when a test has built it (builtHelper), else null. */
export function builtHelperPath(helper: Helper): string | null {
  const out = builtPath(helper);
  return existsSync(out) ? out : null;
}

/** Fake guests' tty jobs keep their window sizes here (not the host's /run). */
export const FAKE_TTY_DIR = path.join(REPO, 'test-output', 'fake-tty');

export async function builtHelper(helper: Helper): Promise<string> {
  const out = builtPath(helper);
  if (existsSync(out)) return out;
  await mkdir(path.dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await buildHelper(helper, tmp);
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
  return out;
}

export const vsockHelper = (): Promise<string> => builtHelper(VSOCK_HELPER);

/**
 * The job launcher built for this host, built now if no test has yet: fake
 * guests and the agent tests' platform start their jobs through it, as the
 * µOS's agent does. Synchronous (one cc run, about a second, once per
 * source): the platforms that use it are made synchronously.
 */
export function launcherForTests(): string {
  const out = builtPath(LAUNCH_HELPER);
  if (existsSync(out)) return out;
  mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    execFileSync('cc', helperCcArgs(LAUNCH_HELPER, tmp), { stdio: ['ignore', 'ignore', 'pipe'] });
    renameSync(tmp, out);
  } finally {
    rmSync(tmp, { force: true });
  }
  return out;
}
