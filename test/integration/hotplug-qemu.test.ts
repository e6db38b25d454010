/**
 * Disk hot-plug in real microVMs under QEMU (TCG), through mvirtd as a
 * separate process: two VMs boot side by side without disks; a volume is
 * hot-plugged into the first (the guest sees it in /sys/block with the
 * volume id as serial), written, hot-unplugged (the guest no longer has it),
 * hot-plugged into the second and read back. Refusals change nothing: a
 * volume attached read-write elsewhere, a detach of a disk the VM lacks.
 * In the guest, a disk's appearance can only be polled (sysfs has no event
 * the job could wait on); on the host every wait is on a reply.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';
import { diskJob, FIND_DISK } from '../support/disks.js';
import type { DryRunPlan, ReplyEnvelope } from '../../protocol/rpc.js';

const MARK = 'mvirt-hotplug-data-7';

/** Wait (in the guest) for the block device whose serial is $ID; $D is its /dev path. */

const plan = (r: ReplyEnvelope): DryRunPlan => {
  assert.ok(r.ok, JSON.stringify(r));
  return r.result as DryRunPlan;
};

const code = (r: { ok: boolean; error?: { code: string } }): string =>
  r.ok ? 'ok' : r.error!.code;

test('hot-plug a volume into one running VM, then into another', { skip, timeout: 300_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-hotplug-qemu-');
    const { c } = await qemuDaemon(dataDir);
    const vol = ok(await c.call('volume.create', { name: 'hot', sizeMiB: 16 }));
    const file = path.join(dataDir, 'volumes', `${vol.id}.raw`);
    const t0 = performance.now();
    for (const name of ['one', 'two']) ok(await c.call('vm.create', { name, memoryMiB: 256 }));
    // A dry run of the boot: QEMU's own argv, and nothing started.
    const boot = plan(await c.send('vm.start', { vm: 'one', dryRun: true }));
    const argv = boot.commands.find((x) => x.kind === 'exec' && /qemu-system/.test(x.argv[0]!));
    assert.ok(argv?.kind === 'exec' && argv.argv.includes('-S'), JSON.stringify(boot.commands));
    assert.equal(ok(await c.call('vm.get', { vm: 'one' })).state, 'stopped');
    // Both boots at once: the test waits for the slower one, not for their sum.
    const [one, two] = await Promise.all(
      ['one', 'two'].map(async (name) =>
        ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: BOOT_MS + 10_000 })),
      ),
    );
    for (const vm of [one!, two!]) {
      trackPid(vm.pid);
      assert.equal(vm.state, 'ready');
    }
    const booted = performance.now();

    // A dry run of the hot-plug: the QMP commands the attach sends, nothing linked or recorded.
    const dry = plan(await c.send('vm.attachDisk', { vm: 'one', volume: 'hot', dryRun: true }));
    assert.deepEqual(
      dry.commands.map((x) =>
        x.kind === 'qmp' ? `${x.execute} ${JSON.stringify(x.arguments)}` : x.kind,
      ),
      [
        `blockdev-add {"driver":"file","node-name":"f-${vol.id}","filename":"${path.join(dataDir, 'vm', one!.id, `${vol.id}.raw`)}","read-only":false}`,
        `blockdev-add {"driver":"raw","node-name":"d-${vol.id}","file":"f-${vol.id}","read-only":false}`,
        `device_add {"driver":"virtio-blk-pci","id":"disk-${vol.id}","drive":"d-${vol.id}","serial":"${vol.id}"}`,
      ],
    );
    assert.deepEqual(dry.files.create, [`vm/${one!.id}/${vol.id}.raw`]);
    assert.equal(existsSync(path.join(dataDir, 'vm', one!.id, `${vol.id}.raw`)), false);
    assert.deepEqual(ok(await c.call('vm.get', { vm: 'one' })).disks ?? [], []);

    // Attach to the running VM `one`: recorded, linked, the guest sees it.
    const a = ok(await c.call('vm.attachDisk', { vm: 'one', volume: 'hot' }));
    assert.deepEqual(a.disks, [{ volume: vol.id, readOnly: false, serial: vol.id }]);
    assert.equal(a.state, 'ready', 'the VM kept running');
    const held = ok(await c.call('volume.get', { volume: 'hot' }));
    assert.deepEqual(held.attachedTo, [{ vm: one!.id, readOnly: false }]);
    assert.equal(held.state, 'attached');
    const link = path.join(dataDir, 'vm', one!.id, `${vol.id}.raw`);
    assert.equal(statSync(link).ino, statSync(file).ino, 'hard-linked into the VM folder');
    assert.equal(
      statSync(file).uid,
      statSync(path.join(dataDir, 'vm', one!.id)).uid,
      "the VM's uid",
    );

    const w = await diskJob(
      c,
      'one',
      `${FIND_DISK}; ls /sys/block | tr '\\n' ' '; echo; printf '%s' ${MARK} | dd of=$D bs=512 seek=2048 conv=fsync 2>/dev/null && echo "written to $D"`,
      vol.id,
    );
    assert.equal(w.exitCode, 0, w.stderr);
    assert.match(w.stdout!, /vd[a-z]/);
    assert.match(w.stdout!, /written to \/dev\/vd[a-z]/);
    console.log(`guest one: ${w.stdout!.trim().replace(/\n/g, '; ')}`);
    // The agent's list on request: the volume by its serial, its size.
    const listed = ok(await c.call('vm.blockDevices', { vm: 'one' })).blockDevices;
    const mine = listed.find((b) => b.serial === vol.id);
    assert.equal(mine?.sizeBytes, 16 << 20, JSON.stringify(listed));
    assert.equal(mine?.readOnly, false);

    // Refusals, each typed and changing nothing.
    const events = async () =>
      ok(await c.call('events.query', { objectId: vol.id, level: 'audit' })).events.length;
    const before = await events();
    assert.equal(
      code(await c.call('vm.attachDisk', { vm: 'two', volume: 'hot' })),
      'VOLUME_IN_USE',
      'attached read-write to one: nobody else may attach it',
    );
    assert.equal(
      code(await c.call('vm.attachDisk', { vm: 'two', volume: 'hot', readOnly: true })),
      'VOLUME_IN_USE',
    );
    assert.equal(
      code(await c.call('vm.detachDisk', { vm: 'two', volume: 'hot' })),
      'DISK_NOT_ATTACHED',
    );
    assert.equal(ok(await c.call('vm.get', { vm: 'two' })).disks, undefined);
    assert.deepEqual(ok(await c.call('volume.get', { volume: 'hot' })).attachedTo, held.attachedTo);
    assert.equal(await events(), before, 'no audit event for a refusal');
    assert.deepEqual(
      readdirSync(path.join(dataDir, 'vm', two!.id)).filter((n) => n.startsWith('vol-')),
      [],
    );

    // Detach: the guest lets go, the disk is gone from it, the link from the folder.
    const d = ok(
      await c.call('vm.detachDisk', { vm: 'one', volume: 'hot' }, { timeoutMs: 60_000 }),
    );
    assert.equal(d.disks, undefined);
    assert.ok(!readdirSync(path.join(dataDir, 'vm', one!.id)).includes(`${vol.id}.raw`));
    assert.equal(statSync(file).uid, process.getuid!(), 'given back to mvirtd');
    const gone = await diskJob(
      c,
      'one',
      'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$ID" ] && echo "still there: $b"; done; ls /sys/block | tr "\\n" " "',
      vol.id,
    );
    assert.equal(gone.exitCode, 0, gone.stderr);
    assert.doesNotMatch(gone.stdout!, /still there/);
    const after = ok(await c.call('vm.blockDevices', { vm: 'one' })).blockDevices;
    assert.ok(!after.some((b) => b.serial === vol.id), JSON.stringify(after));
    const free = ok(await c.call('volume.get', { volume: 'hot' }));
    assert.equal(free.state, 'available');
    assert.deepEqual(free.attachedTo, []);

    // Into the other running VM: the data is there.
    ok(await c.call('vm.attachDisk', { vm: 'two', volume: 'hot' }));
    const r = await diskJob(
      c,
      'two',
      `${FIND_DISK}; dd if=$D bs=512 skip=2048 count=1 2>/dev/null | head -c ${MARK.length}`,
      vol.id,
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, MARK);

    // Each change is an audit event naming the VM, the volume and the caller.
    const audit = ok(await c.call('events.query', { objectId: vol.id, level: 'audit' })).events;
    const changes = audit.filter((e) => /hot-(un)?plugged/.test(e.message));
    assert.deepEqual(
      changes.map((e) => e.message.replace(/^hot: /, '')),
      [
        'attached to VM one (hot-plugged) (available → attached)',
        'detached from VM one (hot-unplugged) (attached → available)',
        'attached to VM two (hot-plugged) (available → attached)',
      ],
    );
    assert.deepEqual(
      changes.map((e) => [...e.objects].sort()),
      [one!.id, one!.id, two!.id].map((vm) => [vm, vol.id].sort()),
    );
    for (const e of changes) assert.ok(e.actor && e.actor !== 'mvirtd', `actor named: ${e.actor}`);
    console.log(
      `boots ${Math.round((booted - t0) / 1000)} s, hot-plug part ${Math.round((performance.now() - booted) / 1000)} s`,
    );
  }),
);
