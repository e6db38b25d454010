/**
 * A recipe using the kernel built by kernel-config/build.sh boots to the agent
 * and reads a cloud-init seed disk (ISO 9660 is built in).
 * `npm test` builds that kernel before the tests when this machine has not
 * cached it yet; run alone, this test builds it itself (about 13 minutes on 2
 * cores, progress on stderr). It never skips.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { writeSeed } from '../../host/network/seed.js';
import { buildImage } from '../../images/build.js';
import { bzImagePayload, elfKernel, elfKernelProblem, elfNotes } from '../../images/vmlinux.js';
import { bootImage, busyCore, standinAgent, testRecipe } from '../../harness/image-qemu.js';

describe('custom kernel image', { timeout: 40 * 60_000 }, () => {
  let tmp: Awaited<ReturnType<typeof standinAgent>>;
  let data = '';
  before(async () => {
    tmp = await standinAgent();
    data = await mkdtemp(path.join(tmpdir(), 'mvirt-data-'));
  });
  after(async () => {
    await tmp.cleanup();
    await rm(data, { recursive: true, force: true });
  });

  // pc is the recipe's machine; microvm needs tsc_early_khz (added by the helper).
  for (const machine of ['pc', 'microvm'] as const) {
    test(`boots to the agent on -M ${machine} with the other core busy`, async (t) => {
      const recipe = await testRecipe(tmp.dir, tmp.agent, {
        name: `test-custom-${machine}`,
        kernel: { custom: 'kernel-config' },
        modules: [],
        machine,
      });
      // Builds the kernel when it is not cached (buildKernel defaults to true).
      const img = await buildImage({ recipe, dataDir: data, log: () => {} });
      assert.equal(img.manifest.kernel.source, 'custom');
      assert.deepEqual(img.manifest.modules, []);
      const seedDir = path.join(tmp.dir, `seed-${machine}`);
      await mkdir(seedDir);
      const token = `token-${machine}`;
      const seed = await writeSeed(seedDir, {
        vmId: `vm-custom-${machine}`,
        hostname: 'custom',
        docs: {},
        token,
      });
      const stop = busyCore();
      const vm = await bootImage(img.dir, {
        memMiB: 128,
        cmdline: 'mvirt.marker=1 mvirt.test=poweroff',
        seed,
      });
      try {
        const init = await vm.waitFor(/MVIRT-MARKER init (\S+)/, 600_000);
        const agent = await vm.waitFor(/MVIRT-MARKER agent (\S+)/, 600_000);
        await vm.waitFor(/STANDIN port mvirt\.agent \/dev\/vport\d+p\d+ chardev/, 180_000);
        // rcS mounted the seed (ISO 9660) and took the agent's token from it.
        const seen = await vm.waitFor(/STANDIN seed instance-id: (\S+) token=(\S*)/, 180_000);
        assert.equal(seen.match[1], `vm-custom-${machine}`);
        assert.equal(seen.match[2], token);
        assert.equal(await vm.exited(180_000), 0);
        t.diagnostic(
          `${machine}: init at ${init.match[1]}s guest (${Math.round(init.wallMs)} ms wall), agent at ${agent.match[1]}s`,
        );
      } finally {
        await vm.kill();
        await stop();
      }
    });
  }

  test('its LZ4 payload is the vmlinux its build kept: the ELF cloud-hypervisor and Firecracker boot', async () => {
    const r = spawnSync('bash', ['kernel-config/build.sh', '--cached-path'], { encoding: 'utf8' });
    assert.equal(r.status, 0, 'built by the boots above');
    const out = r.stdout.trim();
    const bz = path.join(out, 'bzImage');
    assert.equal(bzImagePayload(readFileSync(bz)).codec, 'lz4');
    const elf = await elfKernel(bz, path.join(data, 'kernels'));
    assert.equal(elfKernelProblem(elf), null);
    assert.equal(buildId(elf), buildId(path.join(out, 'vmlinux')), 'the same build');
  });
});

function buildId(file: string): string {
  const r = elfNotes(file);
  assert.ok('notes' in r, file);
  const n = r.notes.find((x) => x.name === 'GNU' && x.type === 3); // NT_GNU_BUILD_ID
  assert.ok(n, `${file}: no build id`);
  return n.desc.toString('hex');
}
