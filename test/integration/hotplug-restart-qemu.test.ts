/**
 * A hot-plugged disk outlives its daemon, in a real microVM under QEMU (TCG),
 * through mvirtd as a separate process: a VM boots without disks, a volume is
 * hot-plugged and written; mvirtd stops (SIGTERM, VMs left running, its
 * default) and a new mvirtd on the same data dir re-attaches the same QEMU.
 * Nothing about the plugged disk was kept but the record: its QEMU names
 * derive from the volume id (hypervisors/qemu/hotplug.ts), so the new daemon
 * can still detach it: the guest lets go, the volume is available, and it
 * plugs in again with its data. One boot. On the host every wait is on a
 * reply; in the guest a disk's appearance can only be polled (FIND_DISK).
 */
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { stopProcess } from '../../harness/daemon.js';
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

const MARK = 'mvirt-hotplug-restart-3';
const write = `${FIND_DISK}; printf '%s' ${MARK} | dd of=$D bs=512 seek=2048 conv=fsync 2>/dev/null && echo written`;
const read = `${FIND_DISK}; dd if=$D bs=512 skip=2048 count=1 2>/dev/null | head -c ${MARK.length}`;
/** Exit 0 either way; "still there" names a block device that still has the serial. */
const lookForIt =
  'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$ID" ] && echo "still there: $b"; done; ls /sys/block | tr "\\n" " "';

test(
  'a disk hot-plugged before a daemon restart is detached by the new daemon',
  { skip, timeout: 600_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-hotplug-restart-');
      // Without --stop-vms-on-exit: the VM must outlive the first daemon's SIGTERM.
      const first = await qemuDaemon(dataDir, [], { leaveVms: true });
      const vol = ok(await first.c.call('volume.create', { name: 'kept', sizeMiB: 16 }));
      const file = path.join(dataDir, 'volumes', `${vol.id}.raw`);
      ok(await first.c.call('vm.create', { name: 'survivor', memoryMiB: 256 }));
      const t0 = performance.now();
      const vm = ok(
        await first.c.call(
          'vm.start',
          { vm: 'survivor', wait: true },
          { timeoutMs: BOOT_MS + 10_000 },
        ),
      );
      trackPid(vm.pid);
      assert.equal(vm.state, 'ready');
      const booted = performance.now();

      ok(await first.c.call('vm.attachDisk', { vm: 'survivor', volume: 'kept' }));
      const w = await diskJob(first.c, 'survivor', write, vol.id);
      assert.equal(w.exitCode, 0, w.stderr);
      assert.match(w.stdout!, /written/);

      // An orderly stop that leaves the VM running; the QEMU process goes on.
      first.c.mqtt.end(true);
      await stopProcess(first.d);
      assert.equal((await first.d.exited).code, 0, 'clean exit on SIGTERM');
      assert.ok(
        first.d.logs.some((l) => l.includes('VMs left running')),
        'the daemon says it left its VMs',
      );
      process.kill(vm.pid!, 0); // throws ESRCH if QEMU went with its daemon

      const { c } = await qemuDaemon(dataDir, [], { leaveVms: true });
      const back = ok(await c.call('vm.get', { vm: 'survivor' }));
      assert.equal(back.pid, vm.pid, 're-attached: the same QEMU process, no reboot');
      assert.equal(back.state, 'ready');
      assert.deepEqual(back.disks, [{ volume: vol.id, readOnly: false, serial: vol.id }]);
      assert.equal(ok(await c.call('volume.get', { volume: 'kept' })).state, 'attached');
      // The guest still has it, with the data written under the first daemon.
      const r = await diskJob(c, 'survivor', read, vol.id);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.stdout, MARK);
      const restarted = performance.now();

      // Detach through the new daemon: device_del, DEVICE_DELETED, blockdev-del by derived names.
      const d = ok(
        await c.call('vm.detachDisk', { vm: 'survivor', volume: 'kept' }, { timeoutMs: 60_000 }),
      );
      assert.equal(d.disks, undefined);
      assert.equal(d.pid, vm.pid, 'the VM kept running');
      assert.ok(!readdirSync(path.join(dataDir, 'vm', vm.id)).includes(`${vol.id}.raw`));
      assert.equal(statSync(file).uid, process.getuid!(), 'given back to mvirtd');
      const gone = await diskJob(c, 'survivor', lookForIt, vol.id);
      assert.equal(gone.exitCode, 0, gone.stderr);
      assert.doesNotMatch(gone.stdout!, /still there/);
      assert.match(gone.stdout!, /vda/, 'the listing ran: the root disk is there');
      const free = ok(await c.call('volume.get', { volume: 'kept' }));
      assert.equal(free.state, 'available');
      assert.deepEqual(free.attachedTo, []);

      // The names are free again in QEMU: a second hot-plug of the same volume works.
      const again = ok(await c.call('vm.attachDisk', { vm: 'survivor', volume: 'kept' }));
      assert.deepEqual(again.disks, [{ volume: vol.id, readOnly: false, serial: vol.id }]);
      const r2 = await diskJob(c, 'survivor', read, vol.id);
      assert.equal(r2.exitCode, 0, r2.stderr);
      assert.equal(r2.stdout, MARK);

      const audit = ok(await c.call('events.query', { objectId: vol.id, level: 'audit' })).events;
      assert.deepEqual(
        audit
          .filter((e) => /hot-(un)?plugged/.test(e.message))
          .map((e) => e.message.replace(/^kept: /, '')),
        [
          'attached to VM survivor (hot-plugged) (available → attached)',
          'detached from VM survivor (hot-unplugged) (attached → available)',
          'attached to VM survivor (hot-plugged) (available → attached)',
        ],
      );
      console.log(
        `boot ${Math.round((booted - t0) / 1000)} s, plug + restart ${Math.round((restarted - booted) / 1000)} s, detach + re-plug ${Math.round((performance.now() - restarted) / 1000)} s`,
      );
    }),
);
