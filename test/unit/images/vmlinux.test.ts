/**
 * The ELF kernel derived from an image's bzImage for cloud-hypervisor and
 * Firecracker (images/vmlinux.ts), on stand-in kernels built by the test:
 * gzip, xz and zstd payloads found through the setup header, the size the
 * build appends checked, the PVH note required, the result cached, and bad
 * kernels refused with KERNEL_UNSUITABLE and nothing left in the cache.
 * The real Debian and custom kernels: test/integration/kernel-elf.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { bzImagePayload, elfKernel, elfKernelProblem } from '../../../images/vmlinux.js';
import { MvirtError } from '../../../protocol/errors.js';
import { fakeBzImage, fakeElfKernel, gzipBzImage } from '../../../harness/kernels.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-vmlinux-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const cache = path.join(dir, 'cache');
let n = 0;
const put = (b: Buffer): string => {
  const f = path.join(dir, `k${++n}`);
  writeFileSync(f, b);
  return f;
};
const compress = (tool: string, data: Buffer): Buffer => {
  const r = spawnSync(tool, ['-c'], { input: data });
  assert.equal(r.status, 0, r.stderr.toString());
  return r.stdout;
};
const unsuitable = (re: RegExp) => (e: unknown) =>
  e instanceof MvirtError && e.code === 'KERNEL_UNSUITABLE' && re.test(e.message);

test('gzip, xz and zstd payloads give the ELF back, checked and cached by the bzImage digest', async () => {
  const elf = fakeElfKernel({ padding: 100_000 });
  for (const [codec, bz] of [
    ['gzip', gzipBzImage(elf)],
    ['xz', fakeBzImage(compress('xz', elf), elf.length)],
    ['zstd', fakeBzImage(compress('zstd', elf), elf.length)],
  ] as const) {
    assert.equal(bzImagePayload(bz).codec, codec);
    const out = await elfKernel(put(bz), cache);
    assert.ok(readFileSync(out).equals(elf), codec);
    assert.equal(elfKernelProblem(out), null);
    // Derived once: the second call finds it (same file, not rewritten).
    const mtime = statSync(out).mtimeMs;
    assert.equal(await elfKernel(put(bz), cache), out);
    assert.equal(statSync(out).mtimeMs, mtime);
  }
  assert.equal(readdirSync(cache).length, 3);
});

test('boots at once derive it once each, side by side, and leave no temporary file', async () => {
  const elf = fakeElfKernel({ padding: 2_000_000 });
  const f = put(gzipBzImage(elf));
  const c = path.join(dir, 'cache-many');
  const outs = await Promise.all(Array.from({ length: 4 }, () => elfKernel(f, c)));
  assert.equal(new Set(outs).size, 1);
  assert.deepEqual(readdirSync(c), [path.basename(outs[0]!)]);
  assert.ok(readFileSync(outs[0]!).equals(elf));
});

test('an ELF kernel is used as it is when it has the PVH note', async () => {
  const f = put(fakeElfKernel());
  assert.equal(await elfKernel(f, cache), f);
  const gnu = put(fakeElfKernel({ pvh: false }));
  await assert.rejects(elfKernel(gnu, cache), unsuitable(/CONFIG_PVH=y/));
  // A real program: an ELF, not a kernel with a PVH entry.
  assert.match(elfKernelProblem(process.execPath) ?? '', /no PVH entry/);
});

test('bad kernels are refused, typed, and leave nothing in the cache', async () => {
  const c = path.join(dir, 'cache-bad');
  const elf = fakeElfKernel({ padding: 10_000 });
  const gz = gzipBzImage(elf);
  const cases: [string, Buffer, RegExp][] = [
    ['not a kernel', Buffer.from('#!/bin/sh\necho hi\n'.repeat(100)), /not a bzImage/],
    [
      'boot protocol 2.06',
      fakeBzImage(compress('xz', elf), elf.length, { version: 0x206 }),
      /older than 2\.08/,
    ],
    ['a payload past the end', gz.subarray(0, gz.length - 100), /outside the file/],
    [
      'an unknown compression',
      fakeBzImage(Buffer.from('BZh91AY&SY not really'), 10),
      /compression/,
    ],
    [
      'a wrong recorded size',
      fakeBzImage(compress('xz', elf), elf.length + 1),
      /payload gave \d+ bytes, the header says/,
    ],
    [
      'a corrupt xz stream',
      (() => {
        const x = compress('xz', elf);
        x.fill(0x55, 40, 80);
        return fakeBzImage(x, elf.length);
      })(),
      /xz -dc failed/,
    ],
    [
      'a payload without the PVH note',
      gzipBzImage(fakeElfKernel({ pvh: false })),
      /its vmlinux: no PVH entry/,
    ],
    ['a payload that is not an ELF', gzipBzImage(Buffer.alloc(5000, 1)), /its vmlinux: not an ELF/],
  ];
  for (const [what, bz, re] of cases) {
    const f = put(bz);
    await assert.rejects(elfKernel(f, c), unsuitable(re), what);
  }
  assert.deepEqual(readdirSync(c), [], 'no derived or temporary file left');
});
