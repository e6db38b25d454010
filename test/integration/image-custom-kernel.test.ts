/**
 * A recipe using the kernel built by kernel-config/build.sh boots to init.
 * The kernel build takes ~13+ minutes on 2 cores, so this test runs only when
 * a cached kernel exists and is reported as SKIPPED (with the reason) when it
 * does not: build it with `bash kernel-config/build.sh`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImage } from '../../images/build.js';
import { KERNEL_CONFIG_DIR } from '../../images/paths.js';
import { bootImage, busyCore, standinAgent, testRecipe } from '../../harness/image-qemu.js';

const cached = spawnSync('bash', [path.join(KERNEL_CONFIG_DIR, 'build.sh'), '--cached-path'], {
  encoding: 'utf8',
});
const kernelDir = cached.status === 0 ? cached.stdout.trim() : null;

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
      if (kernelDir === null) {
        const why =
          'no cached custom kernel: run `bash kernel-config/build.sh` (~13+ min) to enable this test';
        process.stderr.write(`image-custom-kernel: SKIPPED: ${why}\n`);
        t.skip(why);
        return;
      }
      const recipe = await testRecipe(tmp.dir, tmp.agent, {
        name: `test-custom-${machine}`,
        kernel: { custom: 'kernel-config' },
        modules: [],
        machine,
      });
      const img = await buildImage({ recipe, dataDir: data, buildKernel: false, log: () => {} });
      assert.equal(img.manifest.kernel.source, 'custom');
      assert.deepEqual(img.manifest.modules, []);
      const stop = busyCore();
      const vm = await bootImage(img.dir, {
        memMiB: 128,
        cmdline: 'mvirt.marker=1 mvirt.test=poweroff',
      });
      try {
        const init = await vm.waitFor(/MVIRT-MARKER init (\S+)/, 600_000);
        const agent = await vm.waitFor(/MVIRT-MARKER agent (\S+)/, 600_000);
        await vm.waitFor(/STANDIN port mvirt\.agent \/dev\/vport\d+p\d+ chardev/, 180_000);
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
});
