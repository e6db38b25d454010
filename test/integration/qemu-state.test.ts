/**
 * The QEMU backend's saved state against real QEMU under TCG, with the
 * busybox test guest (test/support/qemu-guest.ts): a booted guest's state is
 * saved, the process quits, and a new process (another folder, another VM id)
 * resumes from the file without booting: the guest's console pipe and agent
 * port answer at once. A state is refused, typed, by a spec that does not
 * match it; a damaged state file fails the launch and leaves the file alone.
 */
import assert from 'node:assert/strict';
import { readFile, stat, truncate, copyFile } from 'node:fs/promises';
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
before(async () => {
  guest = await prepareTestGuest();
});
after(async () => {
  await killLaunched();
  await guest?.cleanup();
});

const identity = (text: string): Buffer => Buffer.from(text.padEnd(IDENTITY_BYTES, ' '));

describe('qemu backend: saved state', { timeout: 15 * 60_000 }, () => {
  const backend = testBackend();
  let source: LaunchSpec;
  let vm: RunningVm;
  let file: string;
  let state: SavedState;

  it('saves a booted guest’s state; the VM is left paused and can go on', async () => {
    source = testSpec(guest!, { identity: identity('{"gen":0}') });
    vm = await launchTracked(backend, source);
    const agent = streamReader(await vm.connectAgent());
    await agent.waitFor(AGENT_MARKER, 1, BOOT_MS);
    file = path.join(source.dir, 'state.bin');
    const t0 = performance.now();
    state = await vm.saveState!(file, source);
    const ms = performance.now() - t0;
    const bytes = (await stat(file)).size;
    console.log(`# save: ${bytes} bytes in ${ms.toFixed(0)} ms, machine ${state.machine}`);
    assert.equal(state.bytes, bytes);
    assert.match(state.machine, /^pc-i440fx-\d+\.\d+$/);
    assert.equal(state.memoryMiB, 256);
    assert.equal(await vm.status(), 'paused');
    await vm.resume();
    assert.equal(await vm.status(), 'running');
    // A state file is never overwritten.
    await assert.rejects(vm.saveState!(file, source), (e: unknown) => e instanceof MvirtError);
    assert.equal((await stat(file)).size, bytes);
    vm.signal('SIGKILL');
    await vm.exited;
  });

  it('a new process resumes from it without booting, under another id and folder', async () => {
    const spec = testSpec(guest!, { identity: identity('{"gen":1}'), restore: { file, state } });
    const t0 = performance.now();
    const restored = await launchTracked(backend, spec);
    const ms = performance.now() - t0;
    console.log(`# restore: spawn → running ${ms.toFixed(0)} ms`);
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

  it('a spec that does not match the state is refused, typed, before anything runs', async () => {
    const cases: Array<[Partial<LaunchSpec>, RegExp]> = [
      [{ memoryMiB: 512 }, /256 MiB VM, not 512 MiB/],
      [{ vcpus: 2 }, /1-vCPU VM, not 2/],
      [{ channel: 'tcp' }, /devices/],
    ];
    for (const [over, why] of cases) {
      const spec = testSpec(guest!, { restore: { file, state }, ...over });
      assert.match((await backend.stateProblem!(state, spec)) ?? '', why);
      await assert.rejects(backend.launch(spec, quietLog()), (e: unknown) => {
        assert.ok(e instanceof MvirtError);
        assert.equal(e.code, 'SNAPSHOT_INCOMPATIBLE');
        assert.match(e.message, why);
        return true;
      });
    }
    const other = { ...state, version: 'QEMU emulator version 9.9.9' };
    assert.match(
      (await backend.stateProblem!(other, source)) ?? '',
      /saved by QEMU emulator version 9\.9\.9; this host has QEMU/,
    );
    const q35 = { ...state, machine: 'pc-q35-7.2' };
    assert.match((await backend.stateProblem!(q35, source)) ?? '', /machine type pc-q35-7\.2/);
  });

  it('a truncated state file fails the launch with QEMU’s reason; the file is left as it was', async () => {
    const cut = path.join(path.dirname(file), 'cut.bin');
    await copyFile(file, cut);
    await truncate(cut, Math.floor(state.bytes * 0.9));
    const spec = testSpec(guest!, { identity: identity('{}'), restore: { file: cut, state } });
    await assert.rejects(backend.launch(spec, quietLog()), (e: unknown) => {
      assert.ok(e instanceof MvirtError);
      assert.equal(e.code, 'BOOT_FAILED');
      return true;
    });
    assert.equal((await stat(cut)).size, Math.floor(state.bytes * 0.9));
  });
});
