/**
 * Image builder end to end: two builds of one recipe from scratch, under
 * two umasks and with or without SOURCE_DATE_EPOCH set, are bit-identical
 * (bench/image-repro.ts builds as two machines would: two checkouts, two
 * clean caches, two Nodes); an unchanged rebuild
 * is served from the output cache; the recipe's exclude leaves files out;
 * a recipe's `console` decides whether a shell reads the serial console.
 * Downloads come from the shared cache ($MVIRT_CACHE_DIR or ~/.cache/mvirt).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImage, DEFAULT_SOURCE_DATE_EPOCH } from '../../images/build.js';
import { CONSOLE_SHELL_INITTAB } from '../../images/layout.js';
import { readManifest } from '../../images/manifest.js';
import { sha256File } from '../../images/hash.js';
import { standinAgent, testRecipe } from '../../harness/image-qemu.js';

describe('image build', { timeout: 30 * 60_000 }, () => {
  let tmp: Awaited<ReturnType<typeof standinAgent>>;
  let recipe = '';
  let dataA = '';
  let dataB = '';
  before(async () => {
    tmp = await standinAgent();
    recipe = await testRecipe(tmp.dir, tmp.agent, { name: 'repro' });
    dataA = await mkdtemp(path.join(tmpdir(), 'mvirt-data-a-'));
    dataB = await mkdtemp(path.join(tmpdir(), 'mvirt-data-b-'));
  });
  after(async () => {
    await tmp.cleanup();
    await rm(dataA, { recursive: true, force: true });
    await rm(dataB, { recursive: true, force: true });
  });

  test('two builds from scratch are bit-identical', async () => {
    const log = (): void => {}; // keep test output readable; progress is tested by the CLI run
    const a = await buildImage({ recipe, dataDir: dataA, noCache: true, log });
    // Another machine may have another umask: modes must not depend on it.
    // SOURCE_DATE_EPOCH in the environment (its default value here) must
    // give the same image, not stop mksquashfs.
    const umask = process.umask(0o077);
    process.env.SOURCE_DATE_EPOCH = String(DEFAULT_SOURCE_DATE_EPOCH);
    let b;
    try {
      b = await buildImage({ recipe, dataDir: dataB, noCache: true, log });
    } finally {
      process.umask(umask);
      delete process.env.SOURCE_DATE_EPOCH;
    }
    assert.equal(a.fromCache, false);
    assert.equal(b.fromCache, false);
    assert.deepEqual(a.manifest.outputs, b.manifest.outputs);
    // The files on disk, not only the manifests, must match.
    for (const o of a.manifest.outputs) {
      assert.equal(await sha256File(path.join(a.dir, o.file)), o.sha256, `${o.file} in ${a.dir}`);
      assert.equal(await sha256File(path.join(b.dir, o.file)), o.sha256, `${o.file} in ${b.dir}`);
    }
    const m = await readManifest(a.dir);
    assert.deepEqual(
      m.outputs.map((o) => o.file),
      ['vmlinuz', 'initrd.img', 'rootfs.squashfs'],
    );
    assert.ok(m.inputs.some((i) => i.kind === 'deb' && i.role === 'kernel'));
    assert.ok(m.inputs.some((i) => i.kind === 'deb' && i.name === 'libc6'));
    assert.ok(m.inputs.some((i) => i.kind === 'file' && i.role === 'agent'));
    for (const i of m.inputs) assert.match(i.sha256, /^[0-9a-f]{64}$/);
    assert.ok(
      m.sizes.kernelPlusInitrd < 40 * 1024 * 1024,
      `kernel+initrd ${m.sizes.kernelPlusInitrd} bytes`,
    );
    // The recipe's exclude: gone from the root disk, what the agent links kept.
    const listing = execFileSync('unsquashfs', ['-l', path.join(a.dir, 'rootfs.squashfs')], {
      encoding: 'utf8',
      maxBuffer: 16 << 20,
    });
    const libs = 'squashfs-root/usr/lib/x86_64-linux-gnu';
    assert.doesNotMatch(listing, new RegExp(`^${libs}/gconv`, 'm'));
    assert.doesNotMatch(listing, new RegExp(`^${libs}/libmvec`, 'm'));
    for (const lib of ['libc.so.6', 'libm.so.6', 'libstdc++.so.6', 'libgcc_s.so.1', 'libdl.so.2'])
      assert.match(listing, new RegExp(`^${libs}/${lib.replace(/[.+]/g, '\\$&')}$`, 'm'), lib);
  });

  test('an unchanged rebuild comes from the cache in seconds', async () => {
    const lines: string[] = [];
    const t0 = performance.now();
    const r = await buildImage({ recipe, dataDir: dataA, log: (s) => lines.push(s) });
    const ms = performance.now() - t0;
    assert.equal(r.fromCache, true);
    assert.ok(ms < 15_000, `cached rebuild took ${ms} ms`);
    assert.ok(
      lines.some((l) => /^\[\d+\/\d+\] install cached outputs done in/.test(l)),
      lines.join(''),
    );
  });

  test('console: the shell is in the inittab by default, and not with "off"', async () => {
    const inittab = (dir: string) =>
      execFileSync('unsquashfs', ['-cat', path.join(dir, 'rootfs.squashfs'), 'etc/inittab'], {
        encoding: 'utf8',
      });
    const shell = await buildImage({ recipe, dataDir: dataA, log: () => {} });
    assert.ok(inittab(shell.dir).includes(CONSOLE_SHELL_INITTAB));
    assert.equal(shell.manifest.boot.consoleShell, true);
    const offRecipe = await testRecipe(tmp.dir, tmp.agent, { name: 'quiet', console: 'off' });
    const off = await buildImage({ recipe: offRecipe, dataDir: dataB, log: () => {} });
    assert.doesNotMatch(inittab(off.dir), /console-shell/);
    assert.match(inittab(off.dir), /agent-run/, 'the rest of the inittab as it was');
    assert.equal(off.manifest.boot.consoleShell, false);
  });
});
