import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { bootFiles, Manifest, readManifest } from '../../../images/manifest.js';
import { cpioNewc, S_IFCHR } from '../../../images/cpio.js';

const H = 'a'.repeat(64);
export const sampleManifest = (): Manifest => ({
  schema: 1,
  name: 'default',
  key: H,
  kernel: { file: 'vmlinuz', release: '6.1.0-56-amd64', source: 'debian' },
  initrd: { file: 'initrd.img', compression: 'lz4' },
  disk: {
    file: 'rootfs.squashfs',
    format: 'squashfs',
    compression: 'zstd',
    readOnly: true,
    bus: 'virtio-blk',
  },
  cmdline: 'console=ttyS0',
  boot: {
    machine: 'pc',
    transport: 'virtio-pci',
    serialConsole: 'ttyS0',
    consoleShell: true,
    agentPort: 'mvirt.agent',
    minMemoryMiB: 128,
    testedAccel: ['tcg'],
  },
  inputs: [
    {
      kind: 'deb',
      role: 'kernel',
      name: 'linux-image-6.1.0-56-amd64',
      version: '6.1.192-2',
      sha256: H,
      pinned: true,
      pinnedVersion: '6.1.192-2',
    },
    {
      kind: 'file',
      role: 'agent',
      path: 'dist/agent/mvirt-agent',
      dest: '/usr/bin/mvirt-agent',
      sha256: H,
    },
  ],
  outputs: [{ file: 'vmlinuz', sha256: H, size: 1 }],
  sizes: { kernelPlusInitrd: 1, total: 1 },
  modules: [],
  build: {
    at: new Date(0).toISOString(),
    seconds: 1,
    fromCache: false,
    sourceDateEpoch: 1,
    builderVersion: 1,
  },
  warnings: [],
});

describe('manifest', () => {
  test('the schema accepts a well-formed manifest and rejects extra fields', () => {
    assert.equal(Manifest.safeParse(sampleManifest()).success, true);
    assert.equal(Manifest.safeParse({ ...sampleManifest(), extra: 1 }).success, false);
    const badSha = sampleManifest();
    badSha.outputs = [{ file: 'vmlinuz', sha256: 'xyz', size: 1 }];
    assert.equal(Manifest.safeParse(badSha).success, false);
  });

  test('an image built before the console shell reads as one without it', () => {
    const old = sampleManifest() as { boot: Partial<Manifest['boot']> };
    delete old.boot.consoleShell;
    const parsed = Manifest.parse(old);
    assert.equal(parsed.boot.consoleShell, false);
  });

  test('readManifest reads, validates and gives boot file paths', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'mvirt-manifest-'));
    try {
      await assert.rejects(
        readManifest(dir),
        (e: unknown) => e instanceof MvirtError && e.code === 'IMAGE_NOT_FOUND',
      );
      await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(sampleManifest()));
      const m = await readManifest(dir);
      assert.deepEqual(bootFiles(dir, m), {
        kernel: path.join(dir, 'vmlinuz'),
        initrd: path.join(dir, 'initrd.img'),
        disk: path.join(dir, 'rootfs.squashfs'),
      });
      await writeFile(
        path.join(dir, 'manifest.json'),
        JSON.stringify({ ...sampleManifest(), schema: 2 }),
      );
      await assert.rejects(readManifest(dir), /not a valid manifest/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('cpio newc writer', () => {
  test('is deterministic and well-formed', () => {
    const entries = [
      { name: 'dev', mode: 0o040755 },
      { name: 'dev/console', mode: S_IFCHR | 0o600, rdev: { major: 5, minor: 1 } },
      { name: 'init', mode: 0o100755, data: Buffer.from('#!/bin/sh\n') },
    ];
    const a = cpioNewc(entries, 1704067200);
    assert.deepEqual(a, cpioNewc(entries, 1704067200));
    assert.equal(a.length % 4, 0);
    assert.equal(a.subarray(0, 6).toString(), '070701');
    assert.ok(a.includes(Buffer.from('TRAILER!!!\0')));
    // mtime field of the first header (offset 6 + 5*8) is SOURCE_DATE_EPOCH.
    assert.equal(parseInt(a.subarray(46, 54).toString(), 16), 1704067200);
  });
});
