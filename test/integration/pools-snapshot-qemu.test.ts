/**
 * A fast pool in real microVMs under QEMU (TCG), through mvirtd: with
 * `pool.set {snapshot: true}` the pool's first VM boots and is kept, fresh
 * and ready, as the template snapshot of its image and size; the pool's next
 * VM resumes from it instead of booting; a job on the pool runs in a VM with
 * its own identity, and the VM that refills the pool is a fork again.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RpcClient } from '../../harness/client.js';
import type { PoolRecord, VmRecord } from '../../protocol/rpc.js';
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

const JOB_MS = 120_000;

/** Resolves once the pool's retained record says `n` VMs are ready (watch before acting). */
async function readyWatch(c: RpcClient, pool: string, n: number, timeoutMs: number) {
  const w = await c.watch(
    `${ROOT}/pool/${pool}/state`,
    (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as PoolRecord).vms.ready === n,
    timeoutMs,
  );
  return w.message;
}

async function members(c: RpcClient, pool: string): Promise<VmRecord[]> {
  const vms = ok(await c.call('vm.list')).vms.filter((v) => v.metadata['mvirt.pool'] === pool);
  for (const v of vms) trackPid(v.pid);
  return vms;
}

test(
  'a snapshot pool: one VM boots and becomes the template, the others resume from it',
  { skip, timeout: 1_800_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-pool-snap-');
      const { c } = await qemuDaemon(dataDir);

      const t0 = performance.now();
      const twoReady = readyWatch(c, 'fast', 2, 2 * BOOT_MS);
      const set = ok(
        await c.call('pool.set', { name: 'fast', min: 2, snapshot: true, memoryMiB: 256 }),
      );
      assert.equal(set.snapshot, true);
      await twoReady;
      const allReadyMs = performance.now() - t0;

      const templates = ok(await c.call('snapshot.list', {})).snapshots;
      assert.equal(templates.length, 1, templates.map((s) => s.name).join(', '));
      const tmpl = templates[0]!;
      assert.match(tmpl.name, /^mvirt-template-default-1x256-/);
      const vms = await members(c, 'fast');
      assert.equal(vms.length, 2);
      for (const v of vms) assert.equal(v.state, 'ready', v.name);
      const forks = vms.filter((v) => v.restoredFrom === tmpl.id);
      assert.ok(forks.length >= 1, 'at least one member is a fork of the template');
      const booted = vms.filter((v) => v.restoredFrom === undefined);
      assert.deepEqual(
        booted.map((v) => v.id),
        [tmpl.source.vm],
        'the template was taken of the one member that booted',
      );
      const fork = ok(await c.call('vm.get', { vm: forks[0]!.id }));
      assert.equal(fork.restore?.snapshot, tmpl.id, 'its last start resumed from the template');
      console.log(
        `# snapshot pool: 2 VMs ready ${allReadyMs.toFixed(0)} ms after pool.set (first cold boot ${booted[0]!.boot?.readyAtMs ?? '?'} ms to ready; fork ${fork.restore?.readyAtMs ?? '?'} ms from spawn)`,
      );

      // A job on the pool runs in one of them, under that VM's own name; a new
      // member (watched for from before the job) refills the pool.
      const refill = await c.watch(
        `${ROOT}/vm/+/state`,
        (_t, p) => {
          if (p.length === 0) return false;
          const v = JSON.parse(p.toString()) as VmRecord;
          return (
            v.metadata['mvirt.pool'] === 'fast' &&
            v.state === 'ready' &&
            !vms.some((x) => x.id === v.id)
          );
        },
        BOOT_MS + JOB_MS,
      );
      const job = ok(
        await c.call(
          'job.run',
          { pool: 'fast', argv: ['cat', '/proc/sys/kernel/hostname'], wait: true },
          { timeoutMs: JOB_MS },
        ),
      );
      assert.equal(job.state, 'succeeded', job.stderr);
      const ranOn = vms.find((v) => v.id === job.vm);
      assert.ok(ranOn, 'the job took a pool VM');
      assert.equal(job.stdout, `${ranOn.name}\n`);

      // The VM that refills the pool is a fork of the same template.
      const fresh = JSON.parse((await refill.message).toString()) as VmRecord;
      trackPid(fresh.pid);
      assert.equal(fresh.restoredFrom, tmpl.id, `${fresh.name} resumed from the template`);
      assert.equal(
        ok(await c.call('snapshot.list', {})).snapshots.length,
        1,
        'still the one template',
      );
      ok(await c.call('pool.delete', { name: 'fast' }));
    }),
);
