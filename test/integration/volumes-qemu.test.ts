/**
 * A volume in real microVMs under QEMU (TCG), through mvirtd as a separate
 * process (root here, so QEMU runs confined as each VM's own uid): a VM boots
 * with a volume, a job finds it by its serial in /sys/block/<dev>/serial and
 * writes data; the VM stops; a second VM boots with the same volume and
 * reads the data back. The default µOS has busybox's mke2fs but its Debian
 * kernel carries no ext2/ext4 module, so it cannot mount a filesystem on a
 * volume: the data is raw bytes written with dd and read back with dd.
 * No sleeps: every wait is on a reply.
 */
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { JobRunResult, VmRecord } from '../../protocol/rpc.js';
import type { RpcClient } from '../../harness/client.js';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const JOB_MS = 60_000;

/** The guest's block device whose serial is $ID (busybox sh). */
const FIND =
  'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$ID" ] && D=/dev/${b##*/}; done; [ -n "$D" ] || { echo "no disk with serial $ID" >&2; exit 9; }';
const MARK = 'mvirt-volume-data-42';

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

const sh = async (c: RpcClient, vm: string, script: string, id: string): Promise<JobRunResult> =>
  ok(
    await c.call(
      'job.run',
      { vm, argv: ['sh', '-c', script], env: { ID: id }, wait: true },
      { timeoutMs: JOB_MS },
    ),
  );

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

    const probe = await sh(
      c,
      'writer',
      `${FIND}; echo "dev=$D size=$(cat /sys/block/\${D#/dev/}/size)"; command -v mke2fs mkfs.ext2 || true; grep -c ext /proc/filesystems || true`,
      vol.id,
    );
    assert.equal(probe.exitCode, 0, probe.stderr);
    assert.match(probe.stdout!, /dev=\/dev\/vd[b-z] size=32768/, '16 MiB in 512-byte sectors');
    console.log(`guest: ${probe.stdout!.trim().replace(/\n/g, '; ')}`);

    const w = await sh(
      c,
      'writer',
      `${FIND}; printf '%s' ${MARK} | dd of=$D bs=512 seek=2048 conv=fsync 2>/dev/null && echo written`,
      vol.id,
    );
    assert.equal(w.exitCode, 0, w.stderr);
    assert.match(w.stdout!, /written/);
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
    const r = await sh(
      c,
      'reader',
      `${FIND}; dd if=$D bs=512 skip=2048 count=1 2>/dev/null | head -c ${MARK.length}`,
      vol.id,
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, MARK);
    console.log(`two boots and three jobs in ${Math.round((performance.now() - t0) / 1000)} s`);
  }),
);
