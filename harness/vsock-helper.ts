/**
 * The µOS's vsock helper (initramfs/src/vsock-connect.c) built for this host,
 * as the image builder builds it, so that the fake VMMs' guests dial their
 * hybrid vsock through the same relay a real guest uses (in its `unix:PATH`
 * mode: no AF_VSOCK here). Cached by the source's hash under test-output/;
 * concurrent builders each write their own file and rename it into place.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { buildVsockHelper, VSOCK_HELPER } from '../images/helpers.js';
import { REPO } from './paths.js';

export async function vsockHelper(): Promise<string> {
  const hash = createHash('sha256').update(readFileSync(VSOCK_HELPER.src)).digest('hex');
  const out = path.join(REPO, 'test-output', 'bin', `vsock-connect-${hash.slice(0, 12)}`);
  if (existsSync(out)) return out;
  await mkdir(path.dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await buildVsockHelper(tmp);
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
  return out;
}
