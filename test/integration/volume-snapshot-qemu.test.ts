/**
 * A disk snapshot taken live in a real microVM under QEMU (TCG), through
 * mvirtd as a separate process: a VM boots with a qcow2 volume, a job writes
 * a first marker with dd; while another job keeps writing to the disk, the
 * snapshot is taken (QMP blockdev-snapshot-internal-sync): the VM stays up,
 * the same QEMU process runs on and the writer goes on writing after it.
 * Then a second marker overwrites the first; restore is refused while the VM
 * runs; the VM stops; the volume is restored; the VM boots again and reads
 * the first marker. No sleeps: every wait is on a reply or a published message.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { OutputChunk, VmRecord } from '../../protocol/rpc.js';
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

const JOB_MS = 60_000;

const FIRST = 'mvirt-snapshot-first-1';
const SECOND = 'mvirt-snapshot-second2';

async function start(c: RpcClient, name: string): Promise<VmRecord> {
  const vm = ok(
    await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
  );
  trackPid(vm.pid);
  assert.equal(vm.state, 'ready');
  return vm;
}

const mark = (text: string): string =>
  `${FIND_DISK}; printf '%s' ${text} | dd of=$D bs=512 seek=2048 conv=fsync 2>/dev/null && echo written`;
const readMark = `${FIND_DISK}; dd if=$D bs=512 skip=2048 count=1 2>/dev/null | head -c ${FIRST.length}`;

test(
  'a live snapshot while the guest writes; restore on the stopped volume brings it back',
  { skip, timeout: 300_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-snap-qemu-');
      const { c } = await qemuDaemon(dataDir);
      const vol = ok(
        await c.call('volume.create', { name: 'snapvol', sizeMiB: 16, format: 'qcow2' }),
      );
      ok(
        await c.call('vm.create', {
          name: 'snapper',
          memoryMiB: 256,
          disks: [{ volume: 'snapvol' }],
        }),
      );
      const t0 = performance.now();
      const one = await start(c, 'snapper');

      const w = await diskJob(c, 'snapper', mark(FIRST), vol.id);
      assert.equal(w.exitCode, 0, w.stderr);
      assert.match(w.stdout!, /written/);

      // A writer that goes on until cancelled, elsewhere on the disk, one line per write.
      const writer = ok(
        await c.call('job.run', {
          vm: 'snapper',
          argv: [
            'sh',
            '-c',
            `${FIND_DISK}; i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=$D bs=4096 seek=1024 count=8 conv=fsync 2>/dev/null; echo "w $i"; done`,
          ],
          env: { ID: vol.id },
        }),
      );
      let writes = 0;
      const outTopic = `${ROOT}/job/${writer.jobId}/output`;
      c.mqtt.on('message', (topic, payload) => {
        if (topic !== outTopic) return;
        const chunk = JSON.parse(payload.toString()) as OutputChunk;
        for (const m of String(chunk.data).matchAll(/w (\d+)/g))
          writes = Math.max(writes, Number(m[1]));
      });
      await c.waitFor(outTopic, () => true, JOB_MS);

      const before = writes;
      const ts = performance.now();
      const snap = ok(await c.call('volume.snapshot', { volume: 'snapvol', name: 'first' }));
      const snapMs = Math.round(performance.now() - ts);
      assert.equal(snap.name, 'first');
      assert.equal(snap.vmStateBytes, 0, 'disk-only');
      // The guest goes on writing after the snapshot, in the same QEMU.
      await c.waitFor(
        outTopic,
        (_t, p) =>
          [...String((JSON.parse(p.toString()) as OutputChunk).data).matchAll(/w (\d+)/g)].some(
            (m) => Number(m[1]) > before + 1,
          ),
        JOB_MS,
      );
      const up = ok(await c.call('vm.get', { vm: 'snapper' }));
      assert.equal(up.pid, one.pid, 'the same QEMU process');
      assert.ok(['ready', 'busy'].includes(up.state), up.state);
      assert.equal(ok(await c.call('job.get', { jobId: writer.jobId })).state, 'running');
      console.log(`live snapshot in ${snapMs} ms; writes before it: ${before}, now: ${writes}`);
      ok(await c.call('job.cancel', { jobId: writer.jobId }, { timeoutMs: JOB_MS }));

      // The audit event names the volume and the VM.
      const evs = ok(await c.call('events.query', { objectId: one.id, level: 'audit' })).events;
      const ev = evs.find(
        (e) => e.message === `snapvol: snapshot first taken live in VM ${one.id}`,
      );
      assert.ok(ev, JSON.stringify(evs.map((e) => e.message)));
      assert.ok(ev.objects.includes(vol.id));

      const w2 = await diskJob(c, 'snapper', mark(SECOND), vol.id);
      assert.equal(w2.exitCode, 0, w2.stderr);
      const refused = await c.call('volume.restore', { volume: 'snapvol', snapshot: 'first' });
      assert.equal(refused.ok ? 'ok' : refused.error.code, 'VOLUME_IN_USE');

      ok(await c.call('vm.stop', { vm: 'snapper' }, { timeoutMs: 90_000 }));
      const list = ok(await c.call('volume.snapshots', { volume: 'snapvol' })).snapshots;
      assert.deepEqual(
        list.map((s) => [s.name, s.vmStateBytes]),
        [['first', 0]],
      );
      ok(await c.call('volume.restore', { volume: 'snapvol', snapshot: 'first' }));

      await start(c, 'snapper');
      const r = await diskJob(c, 'snapper', readMark, vol.id);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.stdout, FIRST);
      console.log(
        `two boots, a live snapshot and a restore in ${Math.round((performance.now() - t0) / 1000)} s`,
      );
    }),
);
