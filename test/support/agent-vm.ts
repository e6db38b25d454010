/**
 * Boot the built default µOS image with the QEMU backend and give tests the
 * host end of its agent channel. Shared by the agent-in-a-VM tests; every
 * QEMU is tracked and killed in an after hook by the caller (killLaunched).
 */
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { bootFiles, readManifest, type Manifest } from '../../images/manifest.js';
import type { RunningVm } from '../../host/hypervisors/types.js';
import { launchTracked, testBackend } from './qemu-vm.js';

export const IMAGE_DIR = path.resolve(
  process.env.MVIRT_IMAGES_DIR ?? 'test-output/data/images',
  'default',
);
export const imageMissing = existsSync(path.join(IMAGE_DIR, 'manifest.json'))
  ? false
  : `no default image in ${IMAGE_DIR} (npm test builds it)`;

/** Generous: TCG on a loaded 2-core machine. Product code has no such timeouts. */
export const BOOT_WAIT_MS = 300_000;

export async function bootDefaultImage(opts: {
  vmId: string;
  root: string;
  memoryMiB?: number;
  agentArgs?: Record<string, string>;
}): Promise<{ vm: RunningVm; manifest: Manifest; dir: string }> {
  const manifest = await readManifest(IMAGE_DIR);
  const files = bootFiles(IMAGE_DIR, manifest);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-agentvm-'));
  const vm = await launchTracked(testBackend(), {
    vmId: opts.vmId,
    vcpus: 1,
    memoryMiB: opts.memoryMiB ?? 128,
    kernel: files.kernel,
    initrd: files.initrd,
    cmdline: manifest.cmdline,
    disks: [{ path: files.disk, readOnly: true }],
    dir,
    channel: 'virtio-serial',
    agentArgs: { 'mvirt.root': opts.root, ...opts.agentArgs },
    network: { mode: 'none' },
    consoleLogBytes: 256 * 1024,
  });
  return { vm, manifest, dir };
}
