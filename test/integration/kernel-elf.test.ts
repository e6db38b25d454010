/**
 * The ELF kernel cloud-hypervisor and Firecracker boot, derived from a real
 * bzImage (images/vmlinux.ts): Debian's (an xz payload) from the default image
 * `npm test` builds, with the PVH entry the VMMs jump to. No VM boots here:
 * the VMMs cannot run on this machine (no usable KVM), so this is what says
 * their kernel would load. The custom kernel's (LZ4):
 * test/integration/image-custom-kernel.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readManifest } from '../../images/manifest.js';
import { bzImagePayload, elfKernel, elfKernelProblem } from '../../images/vmlinux.js';
import { IMAGES } from '../support/qemu.js';

const cache = mkdtempSync(path.join(os.tmpdir(), 'mvirt-kernels-'));
after(() => rmSync(cache, { recursive: true, force: true }));

test("Debian's kernel of the default image: an xz payload, a PVH ELF", async (t) => {
  const dir = path.join(IMAGES, 'default');
  const m = await readManifest(dir);
  const bz = path.join(dir, m.kernel.file);
  assert.equal(bzImagePayload(readFileSync(bz)).codec, 'xz');
  const t0 = performance.now();
  const elf = await elfKernel(bz, cache);
  const ms = performance.now() - t0;
  assert.equal(elfKernelProblem(elf), null);
  assert.ok(statSync(elf).size > statSync(bz).size * 2, 'uncompressed');
  const t1 = performance.now();
  assert.equal(await elfKernel(bz, cache), elf);
  t.diagnostic(
    `derived ${statSync(elf).size} bytes in ${Math.round(ms)} ms; cached: ${Math.round(performance.now() - t1)} ms`,
  );
});
