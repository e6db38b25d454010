/**
 * A built image boots under QEMU TCG with the machine's other core busy:
 * init mounts the root disk, sets the hostname, starts the agent, restarts it
 * when it dies, and powers the VM off cleanly. The agent here is a shell
 * stand-in (harness/image-qemu.ts); the agent's own integration test
 * uses the real one.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImage } from '../../images/build.js';
import { bootImage, busyCore, standinAgent, testRecipe } from '../../harness/image-qemu.js';

describe('default image boots under TCG with the other core busy', { timeout: 40 * 60_000 }, () => {
  let tmp: Awaited<ReturnType<typeof standinAgent>>;
  let data = '';
  let imageDir = '';
  let stopBusy: () => Promise<void> = async () => {};
  before(async () => {
    tmp = await standinAgent();
    data = await mkdtemp(path.join(tmpdir(), 'mvirt-data-'));
    const recipe = await testRecipe(tmp.dir, tmp.agent);
    imageDir = (await buildImage({ recipe, dataDir: data })).dir;
    stopBusy = busyCore();
  });
  after(async () => {
    await stopBusy();
    await tmp.cleanup();
    await rm(data, { recursive: true, force: true });
  });

  test('init → agent (restarted once) → clean poweroff, in 128 MiB', async (t) => {
    const vm = await bootImage(imageDir, {
      memMiB: 128,
      cmdline: 'mvirt.marker=1 mvirt.vm=vm-test1 mvirt.test=respawn',
    });
    try {
      const init = await vm.waitFor(/MVIRT-MARKER init (\S+)/, 600_000);
      const first = await vm.waitFor(/MVIRT-MARKER agent \S+ restarts=0/, 600_000);
      await vm.waitFor(/mvirt: agent exited \(3\), restart 1/, 180_000);
      const second = await vm.waitFor(/MVIRT-MARKER agent \S+ restarts=1/, 180_000);
      const port = await vm.waitFor(
        /STANDIN port mvirt\.agent \/dev\/(vport\d+p\d+) chardev/,
        180_000,
      );
      const host = await vm.waitFor(/STANDIN hostname (\S+) init-uptime (\S+)/, 180_000);
      const mounts = await vm.waitFor(/STANDIN mounts (\d+)/, 180_000);
      assert.equal(host.match[1], 'vm-test1');
      assert.equal(
        Number(host.match[2]),
        Number(init.match[1]),
        '/run/mvirt/init-uptime is the init marker time',
      );
      assert.equal(mounts.match[1], '3', 'overlay root, /tmp and /dev/pts mounted');
      // poweroff → busybox init shutdown → ACPI off → QEMU exits 0.
      assert.equal(await vm.exited(180_000), 0);
      t.diagnostic(
        `init at ${init.match[1]}s guest (${Math.round(init.wallMs)} ms wall), agent at ${Math.round(first.wallMs)} ms, restarted at ${Math.round(second.wallMs)} ms, port /dev/${port.match[1]}`,
      );
    } finally {
      await vm.kill();
    }
  });
});
