/**
 * A volume in real microVMs under QEMU (TCG), through mvirtd as a separate
 * process (root here, so QEMU runs confined as each VM's own uid): a VM boots
 * with a volume, a job finds it by its serial in /sys/block/<dev>/serial,
 * makes a filesystem on it (busybox mke2fs: ext2, mounted by the ext4 driver
 * the default image loads) and writes a file; the agent's telemetry lists the
 * disk with its serial and mount; the VM stops; a second VM boots with the
 * same volume, read-only, and reads the file back. That volume is then the
 * template of a qcow2 overlay clone hot-plugged into the same VM: the guest
 * reads the template's file through the clone and overwrites it there, while
 * the template's bytes on the host stay as they were; a full clone of the
 * overlay, plugged in next, carries the clone's write and no template.
 * No sleeps on the host: every wait is on a reply (in the guest a hot-plugged
 * disk's appearance can only be polled, FIND_DISK).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { VmTelemetry } from '../../protocol/metrics.js';
import type { VmRecord } from '../../protocol/rpc.js';
import type { RpcClient } from '../../harness/client.js';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  ROOT,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';
import { diskJob, FIND_DISK } from '../support/disks.js';

const MARK = 'mvirt-volume-data-42';
const CLONE_MARK = 'mvirt-clone-wrote-this';

const sha256 = (file: string): string =>
  createHash('sha256').update(readFileSync(file)).digest('hex');

async function boot(
  c: RpcClient,
  name: string,
  volume: string,
  readOnly = false,
): Promise<VmRecord> {
  ok(await c.call('vm.create', { name, memoryMiB: 256, disks: [{ volume, readOnly }] }));
  const vm = ok(
    await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
  );
  trackPid(vm.pid);
  assert.equal(vm.state, 'ready');
  return vm;
}

test('a volume keeps its data from one VM to the next', { skip, timeout: 600_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-vol-qemu-');
    const { c } = await qemuDaemon(dataDir);
    const vol = ok(await c.call('volume.create', { name: 'shared', sizeMiB: 16 }));
    const file = path.join(dataDir, 'volumes', `${vol.id}.raw`);

    const t0 = performance.now();
    const one = await boot(c, 'writer', 'shared');
    assert.deepEqual(one.disks, [{ volume: vol.id, readOnly: false, serial: vol.id }]);
    // While it runs, the volume is linked into the VM's folder and owned by its QEMU's uid.
    const link = path.join(dataDir, 'vm', one.id, `${vol.id}.raw`);
    assert.equal(statSync(link).ino, statSync(file).ino, 'the same file');
    const qemuUid = statSync(path.join(dataDir, 'vm', one.id)).uid;
    assert.equal(statSync(file).uid, qemuUid);

    const probe = await diskJob(
      c,
      'writer',
      `${FIND_DISK}; echo "dev=$D size=$(cat /sys/block/\${D#/dev/}/size)"`,
      vol.id,
    );
    assert.equal(probe.exitCode, 0, probe.stderr);
    assert.match(probe.stdout!, /dev=\/dev\/vd[b-z] size=32768/, '16 MiB in 512-byte sectors');
    console.log(`guest: ${probe.stdout!.trim().replace(/\n/g, '; ')}`);

    // Telemetry lists the disk by its serial once the guest has mounted it.
    const mounted = c.watch(
      `${ROOT}/vm/${one.id}/telemetry`,
      (_t, p) => {
        const t = JSON.parse(p.toString()) as VmTelemetry;
        return t.blockDevices?.some((b) => b.serial === vol.id && b.mount === '/mnt/v') ?? false;
      },
      120_000,
    );
    await mounted;
    const w = await diskJob(
      c,
      'writer',
      `${FIND_DISK}; mke2fs -q $D && mkdir -p /mnt/v && mount $D /mnt/v && echo ${MARK} >/mnt/v/mark && sync && echo written`,
      vol.id,
    );
    assert.equal(w.exitCode, 0, w.stderr);
    assert.match(w.stdout!, /written/);
    const seen = JSON.parse((await (await mounted).message).toString()) as VmTelemetry;
    const dev = seen.blockDevices!.find((b) => b.serial === vol.id)!;
    assert.deepEqual(
      { size: dev.sizeBytes, readOnly: dev.readOnly },
      { size: 16 * 2 ** 20, readOnly: false },
    );
    assert.ok(
      seen.disk.some((d) => d.mount === '/mnt/v' && d.totalBytes > 0),
      'its usage is in the disk figures',
    );
    ok(await c.call('vm.stop', { vm: 'writer' }, { timeoutMs: 90_000 }));
    // Given back to mvirtd, the link gone.
    assert.equal(statSync(file).uid, process.getuid!());
    assert.ok(!readdirSync(path.join(dataDir, 'vm', one.id)).includes(`${vol.id}.raw`));

    // Read-write to `writer` (stopped, still defined): nobody else may attach it.
    const taken = await c.call('vm.create', { name: 'thief', disks: [{ volume: 'shared' }] });
    assert.equal(taken.ok ? 'ok' : taken.error.code, 'VOLUME_IN_USE');
    const del = await c.call('volume.delete', { volume: 'shared' });
    assert.equal(del.ok ? 'ok' : del.error.code, 'VOLUME_IN_USE');
    ok(await c.call('vm.delete', { vm: 'writer' }));

    // Read-only, a volume other VMs may open too stays mvirtd's: its QEMU may
    // read it, never write it (a guest that took QEMU over must not reach
    // what another VM reads).
    const two = await boot(c, 'reader', 'shared', true);
    assert.equal(statSync(file).uid, process.getuid!());
    assert.equal(statSync(file).mode & 0o022, 0, 'nobody else may write it');
    assert.equal(statSync(file).mode & 0o004, 0o004, "readable by the VM's user");
    assert.equal(
      statSync(path.join(dataDir, 'vm', two.id, `${vol.id}.raw`)).ino,
      statSync(file).ino,
    );
    const r = await diskJob(
      c,
      'reader',
      `${FIND_DISK}; mkdir -p /mnt/v && mount -o ro $D /mnt/v && cat /mnt/v/mark`,
      vol.id,
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, `${MARK}\n`);
    const twoBoots = performance.now();

    // An overlay clone of the written volume (attached read-only: it may be a
    // template), hot-plugged into the same VM beside its template.
    const templateBytes = sha256(file);
    const layer = ok(await c.call('volume.clone', { volume: 'shared', name: 'layer' }));
    assert.deepEqual(
      { format: layer.format, backing: layer.backing },
      { format: 'qcow2', backing: vol.id },
    );
    ok(await c.call('vm.attachDisk', { vm: 'reader', volume: 'layer' }));
    // The same ext2 filesystem through the clone: the template's file, then
    // overwritten there and read back after a remount with the caches dropped
    // (from the overlay, not from memory).
    const cw = await diskJob(
      c,
      'reader',
      `${FIND_DISK}; mkdir -p /mnt/c && mount $D /mnt/c && cat /mnt/c/mark && echo ${CLONE_MARK} >/mnt/c/mark && umount /mnt/c && echo 3 >/proc/sys/vm/drop_caches && mount $D /mnt/c && cat /mnt/c/mark && umount /mnt/c`,
      layer.id,
    );
    assert.equal(cw.exitCode, 0, cw.stderr);
    assert.equal(
      cw.stdout,
      `${MARK}\n${CLONE_MARK}\n`,
      'the template read through the clone, then its own write',
    );
    assert.equal(sha256(file), templateBytes, "the template's file is byte for byte unchanged");
    // The write went to the overlay's file (qcow2 keeps data clusters as they are).
    assert.ok(
      readFileSync(path.join(dataDir, 'volumes', `${layer.id}.qcow2`)).includes(CLONE_MARK),
      "the clone's write is in the overlay",
    );

    // A full clone of the overlay (detached first: a disk being written is not
    // cloned) is one independent file: the template's filesystem, copied (it
    // mounts with no backing file), with the clone's write in it.
    ok(await c.call('vm.detachDisk', { vm: 'reader', volume: 'layer' }, { timeoutMs: 60_000 }));
    const flat = ok(await c.call('volume.clone', { volume: 'layer', name: 'flat', mode: 'full' }));
    assert.deepEqual(
      { format: flat.format, backing: flat.backing },
      { format: 'qcow2', backing: null },
    );
    ok(await c.call('vm.attachDisk', { vm: 'reader', volume: 'flat' }));
    const fr = await diskJob(
      c,
      'reader',
      `${FIND_DISK}; mkdir -p /mnt/f && mount -o ro $D /mnt/f && cat /mnt/f/mark`,
      flat.id,
    );
    assert.equal(fr.exitCode, 0, fr.stderr);
    assert.equal(fr.stdout, `${CLONE_MARK}\n`);
    assert.equal(sha256(file), templateBytes);
    console.log(
      `two boots and three jobs in ${Math.round((twoBoots - t0) / 1000)} s; clones, plugs and two jobs in ${Math.round((performance.now() - twoBoots) / 1000)} s`,
    );
  }),
);
