/**
 * A snapshot of a VM with a volume, in real microVMs under QEMU (TCG),
 * through mvirtd: the VM writes a mark to its volume (flushed), is
 * snapshotted, and writes another over it. Two forks resume from the
 * snapshot, each with its own copy of the volume (found in the guest by its
 * own serial, the new volume's id): each reads the mark as it was at the
 * snapshot, not the later one, from the disk (the page cache dropped first),
 * writes its own and reads it back, and neither sees the other's; the
 * source keeps its later mark. Then the source is suspended with its
 * volume, its disks cannot change meanwhile, and a start resumes it with the
 * volume as it was. The pause of the snapshot, and what the copy took of it,
 * are printed (the audit event's pausedMs and diskMs).
 *
 * Marks are written raw to the first sector (no filesystem: what is read
 * is what the disk holds), padded to 512 bytes, with fsync.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { RpcClient } from '../../harness/client.js';
import type { VmRecord, VolumeRecord } from '../../protocol/rpc.js';
import { diskJob, FIND_DISK } from '../support/disks.js';
import {
  BOOT_MS,
  explained,
  ok,
  qemuDaemon,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const JOB_MS = 120_000;
const BEFORE = 'mark-before-the-snapshot';
const AFTER = 'mark-after-the-snapshot';

/** Write `mark` to the first sector of the disk whose serial is `id`, flushed to it. */
async function writeMark(c: RpcClient, vm: string, id: string, mark: string): Promise<void> {
  const r = await diskJob(
    c,
    vm,
    `${FIND_DISK}; printf '%s' '${mark}' | dd of=$D bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null && echo written`,
    id,
    JOB_MS,
  );
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout ?? '', /written/);
}

/** The mark on the disk whose serial is `id`, read from the disk (the page cache dropped first). */
async function readMark(c: RpcClient, vm: string, id: string): Promise<string> {
  const r = await diskJob(
    c,
    vm,
    `${FIND_DISK}; sync; echo 3 >/proc/sys/vm/drop_caches; dd if=$D bs=512 count=1 2>/dev/null | tr -d '\\000'`,
    id,
    JOB_MS,
  );
  assert.equal(r.exitCode, 0, r.stderr);
  return r.stdout ?? '';
}

/** The first bytes of a volume's file on the host. */
const hostMark = (file: string, n: number): string =>
  readFileSync(file).subarray(0, n).toString('latin1');

test(
  'forks of a snapshot of a VM with a volume each get the volume as it was, and their own',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-snapvol-');
      const { c } = await qemuDaemon(dataDir);
      const vol = ok(await c.call('volume.create', { name: 'data', sizeMiB: 16 }));
      const volFile = path.join(dataDir, 'volumes', `${vol.id}.raw`);
      ok(await c.call('vm.create', { name: 'src', memoryMiB: 256, disks: [{ volume: 'data' }] }));
      const src = ok(
        await c.call('vm.start', { vm: 'src', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(src.pid);
      await writeMark(c, 'src', vol.id, BEFORE);

      const snap = ok(
        await c.call('vm.snapshot', { vm: 'src', name: 'with-data' }, { timeoutMs: JOB_MS }),
      );
      assert.deepEqual(
        snap.disks?.map((d) => [d.volume, d.kept, d.format, d.readOnly]),
        [[vol.id, 'copy', 'raw', false]],
      );
      const copy = path.join(dataDir, 'snapshots', snap.id, 'disk-0.raw');
      assert.equal(hostMark(copy, BEFORE.length), BEFORE, "the snapshot's copy of the volume");
      const audit = ok(await c.call('events.query', { objectId: snap.id, limit: 20 })).events.find(
        (e) => /snapshot with-data taken/.test(e.message),
      );
      const { pausedMs, diskMs } = audit?.data as { pausedMs: number; diskMs: number };
      console.log(
        `# snapshot of a 256 MiB VM with a 16 MiB volume: paused ${pausedMs} ms, of which ${diskMs} ms copying the volume`,
      );
      assert.ok(diskMs <= pausedMs);

      // The source goes on, and overwrites its mark.
      assert.equal(ok(await c.call('vm.get', { vm: 'src' })).state, 'ready');
      await writeMark(c, 'src', vol.id, AFTER);
      assert.equal(await readMark(c, 'src', vol.id), AFTER);
      assert.equal(hostMark(copy, BEFORE.length), BEFORE, 'the copy did not change with it');

      const made = ok(
        await c.call(
          'vm.create',
          { name: 'fork', fromSnapshot: 'with-data', count: 2, wait: true },
          { timeoutMs: BOOT_MS + 10_000 },
        ),
      );
      const forks: VmRecord[] = [made, ...(made.forks ?? [])];
      const own: Record<string, VolumeRecord> = {};
      for (const f of forks) {
        trackPid(f.pid);
        assert.equal(f.state, 'ready');
        const v = ok(await c.call('volume.get', { volume: `${f.name}-disk1` }));
        assert.deepEqual(f.disks, [{ volume: v.id, readOnly: false, serial: v.id }]);
        own[f.name] = v;
        // Its own disk (by the new volume's serial) holds the mark as it was at the snapshot.
        assert.equal(await readMark(c, f.name, v.id), BEFORE, `${f.name}: as at the snapshot`);
      }
      await writeMark(c, 'fork-1', own['fork-1']!.id, 'written-by-fork-one');
      await writeMark(c, 'fork-2', own['fork-2']!.id, 'written-by-fork-two');
      assert.equal(await readMark(c, 'fork-1', own['fork-1']!.id), 'written-by-fork-one');
      assert.equal(await readMark(c, 'fork-2', own['fork-2']!.id), 'written-by-fork-two');
      assert.equal(await readMark(c, 'src', vol.id), AFTER, 'the source keeps its own');
      const forkFile = (f: string) => path.join(dataDir, 'volumes', `${own[f]!.id}.raw`);
      assert.equal(hostMark(forkFile('fork-1'), 19), 'written-by-fork-one');
      assert.equal(hostMark(forkFile('fork-2'), 19), 'written-by-fork-two');
      assert.equal(hostMark(volFile, AFTER.length), AFTER);

      // The forks own their copies: the snapshot can go.
      ok(await c.call('snapshot.delete', { snapshot: 'with-data' }));

      // Suspended with its volume: nothing may change its disks until it resumes.
      ok(await c.call('volume.create', { name: 'spare', sizeMiB: 1 }));
      const s = ok(await c.call('vm.suspend', { vm: 'src' }, { timeoutMs: JOB_MS }));
      assert.equal(s.state, 'suspended');
      const attach = await c.call('vm.attachDisk', { vm: 'src', volume: 'spare' });
      assert.equal(attach.ok ? 'attached' : attach.error.code, 'VM_BAD_STATE');
      const resize = await c.call('volume.resize', { volume: 'data', sizeMiB: 32 });
      assert.equal(resize.ok ? 'resized' : resize.error.code, 'VOLUME_IN_USE');
      const back = ok(
        await c.call('vm.start', { vm: 'src', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(back.pid);
      assert.equal(back.restore?.snapshot, 'suspend');
      assert.equal(await readMark(c, 'src', vol.id), AFTER, 'resumed with its volume as it was');
    }),
);
