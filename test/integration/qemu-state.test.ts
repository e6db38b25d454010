/**
 * The QEMU backend's saved state against real QEMU under TCG, with the
 * busybox test guest (test/support/qemu-guest.ts), for both ways of keeping
 * guest RAM (state.ts): in the migration stream, and as a tmpfs file copied
 * beside it. A booted guest's state is saved, the process quits, and a new
 * process (another folder, another VM id) resumes from the folder without
 * booting: the guest's agent port answers at once. A state is refused,
 * typed, by a spec that does not match it; a damaged state fails the launch
 * and leaves the files alone; a RAM file goes with its process.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, stat, truncate } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MvirtError } from '../../protocol/errors.js';
import type { LaunchSpec, RunningVm, SavedState } from '../../host/hypervisors/types.js';
import { AGENT_MARKER, prepareTestGuest, type TestGuest } from '../support/qemu-guest.js';
import {
  killLaunched,
  launchTracked,
  quietLog,
  streamReader,
  testBackend,
  testSpec,
} from '../support/qemu-vm.js';
import { IDENTITY_BYTES } from '../../protocol/agent.js';

const BOOT_MS = 240_000;

let guest: TestGuest | null = null;
let ramRoot: string;
before(async () => {
  guest = await prepareTestGuest();
  ramRoot = await mkdtemp('/dev/shm/mvirt-test-ram-');
  await chmod(ramRoot, 0o711); // each VM's user reaches its own RAM file through it
});
after(async () => {
  await killLaunched();
  await guest?.cleanup();
  await rm(ramRoot, { recursive: true, force: true });
});

const identity = (text: string): Buffer => Buffer.from(text.padEnd(IDENTITY_BYTES, ' '));

for (const ram of ['stream', 'file'] as const) {
  describe(`qemu backend: saved state, RAM as ${ram}`, { timeout: 15 * 60_000 }, () => {
    const ramDir = () => (ram === 'file' ? path.join(ramRoot, 'ram') : null);
    const backend = () => testBackend({ ramDir: ramDir() });
    let source: LaunchSpec;
    let vm: RunningVm;
    let dir: string;
    let state: SavedState;

    it('saves a booted guest’s state; the VM is left paused and can go on', async () => {
      source = testSpec(guest!, { identity: identity('{"gen":0}') });
      vm = await launchTracked(backend(), source);
      const ramFile = path.join(ramRoot, 'ram', `${source.vmId}.ram`);
      assert.equal(existsSync(ramFile), ram === 'file', 'a RAM file only with a RAM folder');
      const agent = streamReader(await vm.connectAgent());
      await agent.waitFor(AGENT_MARKER, 1, BOOT_MS);
      dir = path.join(source.dir, 'saved');
      await mkdir(dir);
      const t0 = performance.now();
      state = await vm.saveState!(dir, source);
      const ms = performance.now() - t0;
      console.log(
        `# ${ram}: save ${JSON.stringify(state.files)} in ${ms.toFixed(0)} ms, machine ${state.machine}`,
      );
      assert.equal(state.ram, ram);
      assert.deepEqual(
        Object.keys(state.files).sort(),
        ram === 'file' ? ['ram.bin', 'state.bin'] : ['state.bin'],
      );
      for (const [name, bytes] of Object.entries(state.files))
        assert.equal((await stat(path.join(dir, name))).size, bytes, name);
      if (ram === 'file')
        assert.ok(state.files['state.bin']! < 4 << 20, 'RAM is not in the stream');
      assert.match(state.machine, /^pc-i440fx-\d+\.\d+$/);
      assert.equal(await vm.status(), 'paused');
      await vm.resume();
      assert.equal(await vm.status(), 'running');
      // A saved state is never overwritten.
      const before = state.files['state.bin'];
      await assert.rejects(vm.saveState!(dir, source), (e: unknown) => e instanceof MvirtError);
      assert.equal((await stat(path.join(dir, 'state.bin'))).size, before);
      vm.signal('SIGKILL');
      await vm.exited;
      assert.equal(existsSync(ramFile), false, 'the RAM file goes with its process');
    });

    it('a new process resumes from it without booting, under another id and folder', async () => {
      const spec = testSpec(guest!, { identity: identity('{"gen":1}'), restore: { dir, state } });
      const t0 = performance.now();
      const restored = await launchTracked(backend(), spec);
      const ms = performance.now() - t0;
      console.log(`# ${ram}: restore spawn → running ${ms.toFixed(0)} ms`);
      assert.equal(await restored.status(), 'running');
      // The guest's echo loop on the agent port was mid-read when saved: it answers now.
      const agent = await restored.connectAgent();
      const reader = streamReader(agent);
      agent.write('hello-after-restore\n');
      await reader.waitFor('hello-after-restore', 1, 60_000);
      assert.equal(
        (await readFile(path.join(spec.dir, 'identity'))).subarray(0, 9).toString(),
        '{"gen":1}',
      );
      restored.signal('SIGKILL');
      await restored.exited;
    });

    it('a spec or host that does not match the state is refused, typed, before anything runs', async () => {
      const cases: Array<[Partial<LaunchSpec>, RegExp]> = [
        [{ memoryMiB: 512 }, /256 MiB VM, not 512 MiB/],
        [{ vcpus: 2 }, /1-vCPU VM, not 2/],
        [{ channel: 'tcp' }, /devices/],
      ];
      for (const [over, why] of cases) {
        const spec = testSpec(guest!, { restore: { dir, state }, ...over });
        assert.match((await backend().stateProblem!(state, spec)) ?? '', why);
        await assert.rejects(backend().launch(spec, quietLog()), (e: unknown) => {
          assert.ok(e instanceof MvirtError);
          assert.equal(e.code, 'SNAPSHOT_INCOMPATIBLE');
          assert.match(e.message, why);
          return true;
        });
      }
      const other = { ...state, version: 'QEMU emulator version 9.9.9' };
      assert.match(
        (await backend().stateProblem!(other, source)) ?? '',
        /saved by QEMU emulator version 9\.9\.9; this host has QEMU/,
      );
      const q35 = { ...state, machine: 'pc-q35-7.2' };
      assert.match((await backend().stateProblem!(q35, source)) ?? '', /machine type pc-q35-7\.2/);
      // The other way of keeping RAM cannot load it.
      const otherRam = testBackend({ ramDir: ram === 'file' ? null : path.join(ramRoot, 'x') });
      assert.match((await otherRam.stateProblem!(state, source)) ?? '', /keeps guest RAM as/);
    });

    it('a truncated state fails the launch with QEMU’s reason; the files are left as they were', async () => {
      const cut = path.join(path.dirname(dir), 'cut');
      await cp(dir, cut, { recursive: true });
      const size = Math.floor(state.files['state.bin']! * 0.5);
      await truncate(path.join(cut, 'state.bin'), size);
      const spec = testSpec(guest!, { identity: identity('{}'), restore: { dir: cut, state } });
      await assert.rejects(backend().launch(spec, quietLog()), (e: unknown) => {
        assert.ok(e instanceof MvirtError);
        assert.equal(e.code, 'BOOT_FAILED');
        return true;
      });
      assert.equal((await stat(path.join(cut, 'state.bin'))).size, size);
      assert.equal(existsSync(path.join(ramRoot, 'ram', `${spec.vmId}.ram`)), false);
    });
  });
}
