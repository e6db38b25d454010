/**
 * Real microVMs under QEMU (TCG) through mvirtd, as a separate process:
 * create → start(wait) → ready → pause → resume → reboot → ready → stop;
 * kill; a QEMU killed from outside is noticed; kill -9 mvirtd while a VM runs
 * and the restarted daemon has it ready again with the same QEMU pid, still in
 * its cgroup, which goes once the VM stops; the confined QEMU seen from
 * mvirtd (system.info, a uid that cannot read mvirt.db) and a guest that
 * allocates far beyond its memory, stopped by the guest's OOM killer inside
 * the VM's cgroup while mvirtd and the host carry on.
 * Needs the default image (`npm test` builds it into test-output/data/images,
 * or set MVIRT_IMAGES_DIR); skipped otherwise. Generous timeouts: TCG on a
 * busy 2-core machine is slow. No sleeps: every wait is on a message.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { memoryLimitBytes } from '../../host/hypervisors/qemu/confine.js';
import type { JobRecord, SystemInfo, VmRecord } from '../../protocol/rpc.js';
import { cgroupFacts, procFacts, readAs } from '../support/confinement.js';
import {
  BOOT_MS,
  explained,
  field,
  ok,
  qemuDaemon as daemon,
  ROOT,
  skipNoImage as skip,
  tempDataDir,
  trackPid,
} from '../support/qemu.js';

const stateIs = (want: string) => field('to', want);

/** Resolves once `dir` is gone (the cgroup is removed on the hypervisor's exit event). */
const gone = (dir: string, ms = 10_000): Promise<void> =>
  new Promise((resolve, reject) => {
    const until = Date.now() + ms;
    const check = () => {
      if (!existsSync(dir)) resolve();
      else if (Date.now() > until) reject(new Error(`${dir} still there after ${ms} ms`));
      else setImmediate(check);
    };
    check();
  });

test('real VM lifecycle under QEMU', { skip, timeout: 900_000 }, () =>
  explained(async () => {
    const dataDir = await tempDataDir('mvirt-qemu-');
    const { c } = await daemon(dataDir);
    const vm = ok(await c.call('vm.create', { name: 'life' }));
    const started = ok(
      await c.call('vm.start', { vm: 'life', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(started.pid!);
    assert.equal(started.state, 'ready');
    assert.ok(started.agentVersion);
    assert.equal(
      ok(await c.call('vm.pause', { vm: 'life' }, { timeoutMs: 30_000 })).state,
      'paused',
    );
    assert.equal(
      ok(await c.call('vm.resume', { vm: 'life' }, { timeoutMs: 30_000 })).state,
      'ready',
    );
    const readyAgain = await c.watch(`${ROOT}/vm/${vm.id}/events`, stateIs('ready'), BOOT_MS);
    ok(await c.call('vm.reboot', { vm: 'life' }, { timeoutMs: 30_000 }));
    await readyAgain.message;
    const after = ok(await c.call('vm.get', { vm: 'life' }));
    assert.equal(after.pid, started.pid, 'a reboot keeps the QEMU process');
    const stopped = ok(await c.call('vm.stop', { vm: 'life' }, { timeoutMs: 120_000 }));
    assert.equal(stopped.state, 'stopped');

    // Started again right after its stop (same folder, same socket paths), then killed.
    const again = ok(
      await c.call('vm.start', { vm: 'life', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(again.pid!);
    assert.equal(again.state, 'ready');
    assert.notEqual(again.pid, started.pid);
    const killed = ok(await c.call('vm.kill', { vm: 'life' }, { timeoutMs: 30_000 }));
    assert.equal(killed.state, 'stopped');
    assert.throws(() => process.kill(again.pid!, 0), /ESRCH/);

    ok(await c.call('vm.delete', { vm: 'life' }));
  }),
);

test(
  'a QEMU killed from outside is noticed within about a second',
  { skip, timeout: 900_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-qemu-ext-');
      const { c } = await daemon(dataDir);
      // QEMU killed from outside: noticed within about a second.
      ok(await c.call('vm.create', { name: 'life-ext' }));
      const third = ok(await c.call('vm.start', { vm: 'life-ext' }, { timeoutMs: 60_000 }));
      const fresh = ok(await c.call('vm.get', { vm: 'life-ext' }));
      trackPid(fresh.pid!);
      const failed = await c.watch(`${ROOT}/vm/${third.id}/events`, stateIs('failed'), 10_000);
      const t0 = performance.now();
      process.kill(fresh.pid!, 'SIGKILL');
      await failed.message;
      assert.ok(
        performance.now() - t0 < 1500,
        `noticed after ${Math.round(performance.now() - t0)} ms`,
      );
    }),
);

test(
  'recovery: kill -9 mvirtd while a VM runs; it is ready again, same QEMU',
  { skip, timeout: 900_000 },
  async () => {
    const dataDir = await tempDataDir('mvirt-qemu-rec-');
    const first = await daemon(dataDir);
    ok(await first.c.call('vm.create', { name: 'keep' }));
    const started = ok(
      await first.c.call('vm.start', { vm: 'keep', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(started.pid!);
    first.c.mqtt.end(true);
    first.d.child.kill('SIGKILL');
    await first.d.exited;
    process.kill(started.pid!, 0); // QEMU survived its daemon

    const cgroup = cgroupFacts(started.pid!);
    const second = await daemon(dataDir);
    const back = ok(await second.c.call('vm.get', { vm: 'keep' }));
    assert.equal(back.pid, started.pid, 'same QEMU process: no reboot');
    assert.equal(back.state, 'ready');
    assert.deepEqual(cgroupFacts(back.pid!), cgroup, 'still in its own cgroup, same limits');
    const stopped = ok(
      await second.c.call('vm.stop', { vm: 'keep' }, { timeoutMs: 120_000 }),
    ) as VmRecord;
    assert.equal(stopped.state, 'stopped');
    await gone(cgroup.memoryDir); // the adopted VM's cgroup goes with it
  },
);

test(
  'a confined QEMU under mvirtd; a guest allocating far beyond its memory is contained',
  { skip, timeout: 900_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-qemu-conf-');
      const { c, d } = await daemon(dataDir);
      const info = ok(await c.call('system.info', {})) as SystemInfo;
      const conf = info.backends.find((b) => b.name === 'qemu')?.confinement;
      assert.equal(conf?.user, true, JSON.stringify(conf));
      assert.notEqual(conf?.cgroup, null, JSON.stringify(conf));
      assert.equal(conf?.seccomp, true);

      ok(await c.call('vm.create', { name: 'hog', memoryMiB: 256 }));
      const vm = ok(
        await c.call('vm.start', { vm: 'hog', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      ) as VmRecord;
      trackPid(vm.pid!);
      const qemu = procFacts(vm.pid!);
      const uid = qemu.uids[0]!;
      assert.notEqual(uid, 0);
      assert.notEqual(uid, procFacts(d.pid).uids[0], "not mvirtd's user");
      assert.equal(qemu.seccomp, '2');
      // The QEMU user reaches its folder through the data folder, but nothing else in it.
      assert.match(
        (await readAs(uid, path.join(dataDir, 'mvirt.db'))) ?? 'read it',
        /Permission denied/,
      );
      const cg = cgroupFacts(vm.pid!);
      assert.equal(cg.memoryMax, memoryLimitBytes(256, 128));

      // A job that wants far more than the 256 MiB the guest has, beside one that
      // wants nothing: the guest's OOM killer must pick the first and only it.
      const bystander = ok(
        await c.call('job.run', { vm: 'hog', argv: ['sh', '-c', 'echo up; exec sleep 600'] }),
      );
      await c.waitFor(`${ROOT}/job/${bystander.jobId}/output`, () => true, 120_000);
      const mvirtdRss = rssKiB(d.pid);
      const hog = ok(
        await c.call(
          'job.run',
          {
            vm: 'hog',
            wait: true,
            // 8 MiB strings, each written in full, kept until memory runs out (busybox awk).
            argv: [
              'awk',
              'BEGIN { while (n < 512) a[n++] = sprintf("%8388608d", n); print "allocated" }',
            ],
          },
          { timeoutMs: 300_000 },
        ),
      ) as JobRecord & { stdout?: string };
      assert.equal(
        hog.signal,
        'SIGKILL',
        `the guest's OOM killer ends the job: ${JSON.stringify(hog)}`,
      );
      assert.doesNotMatch(hog.stdout ?? '', /allocated/);
      assert.equal(hog.oomKilled, true);
      // The agent kept its session all along (one hello), and the other job runs on.
      const hellos = (
        ok(await c.call('events.query', { objectId: vm.id })) as { events: { message: string }[] }
      ).events.filter((e) => /^agent hello/.test(e.message));
      assert.equal(hellos.length, 1, "the agent's pages were never taken from it");
      assert.equal(ok(await c.call('job.get', { jobId: bystander.jobId })).state, 'running');
      const cancelled = ok(
        await c.call('job.cancel', { jobId: bystander.jobId }, { timeoutMs: 60_000 }),
      );
      assert.equal(cancelled.state, 'cancelled');
      assert.equal(cancelled.oomKilled, false, 'the OOM kill is not charged to the bystander');
      const vmstat = ok(
        await c.call(
          'job.run',
          {
            vm: 'hog',
            wait: true,
            argv: [
              'sh',
              '-c',
              'grep oom_kill /proc/vmstat; cat /sys/fs/cgroup/agent/memory.events',
            ],
          },
          { timeoutMs: 120_000 },
        ),
      ) as JobRecord & { stdout?: string };
      assert.equal(vmstat.exitCode, 0, 'the VM still runs jobs');
      assert.match(vmstat.stdout ?? '', /oom_kill [1-9]/, 'the guest kernel killed it');
      // Jobs are capped below what was free, so nothing was taken from the agent on the way.
      assert.match(vmstat.stdout ?? '', /^low 0$/m, "the agent's protection never breached");
      // The host side: QEMU alive and inside its limit, mvirtd unmoved.
      process.kill(vm.pid!, 0);
      assert.deepEqual(cgroupFacts(vm.pid!), cg);
      const used = Number(
        readFileSync(
          path.join(
            cg.memoryDir,
            cg.version === 'v1' ? 'memory.max_usage_in_bytes' : 'memory.peak',
          ),
          'utf8',
        ),
      );
      assert.ok(used <= cg.memoryMax, `peak ${used} within ${cg.memoryMax}`);
      console.log(
        `# QEMU cgroup peak ${(used / 2 ** 20).toFixed(0)} MiB of ${(cg.memoryMax / 2 ** 20).toFixed(0)} MiB; mvirtd RSS ${mvirtdRss} → ${rssKiB(d.pid)} KiB`,
      );
      assert.ok(rssKiB(d.pid) - mvirtdRss < 32 * 1024, 'mvirtd did not grow');
      const state = (ok(await c.call('vm.get', { vm: 'hog' })) as VmRecord).state;
      assert.equal(state, 'ready');

      ok(await c.call('vm.stop', { vm: 'hog' }, { timeoutMs: 120_000 }));
      await gone(cg.memoryDir);
    }),
);

const rssKiB = (pid: number): number =>
  Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
