/**
 * Working inside a real microVM under QEMU (TCG), through mvirtd (issue 17):
 * the serial console answers with a shell (a command's output comes back,
 * Ctrl-C reaches the foreground process); a job's own limits bind in its
 * cgroup (past its memory only it is OOM-killed, its CPU share is held) and
 * its record carries the CPU time and peak memory it used; a kernel panic
 * makes the VM failed with the panic's message instead of a silent reboot.
 * No sleeps: every wait is on a message or a reply.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { JobRecord, ParamsOf, ReplyEnvelope, VmRecord } from '../../protocol/rpc.js';
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

const JOB_MS = 120_000;
const MiB = 1024 * 1024;

type RunResult = JobRecord & { stdout?: string; stderr?: string };
const run = async (c: RpcClient, params: ParamsOf<'job.run'>): Promise<RunResult> =>
  ok(await c.call('job.run', { wait: true, ...params }, { timeoutMs: JOB_MS }));

/** Console output from now on, and a wait for text in it. */
async function consoleOf(c: RpcClient, vmId: string) {
  const topic = `${ROOT}/vm/${vmId}/console/out`;
  let text = '';
  const waiters = new Set<() => void>();
  c.mqtt.on('message', (t, p) => {
    if (t !== topic) return;
    text += p.toString('latin1');
    for (const w of waiters) w();
  });
  await c.mqtt.subscribeAsync(topic, { qos: 0 });
  return {
    type: (s: string) => c.mqtt.publishAsync(`${ROOT}/vm/${vmId}/console/in`, s, { qos: 1 }),
    /** Resolves once `re` matches what came after `from`. */
    until(re: RegExp, from: number, ms = JOB_MS): Promise<void> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`console: no ${re} within ${ms} ms; it said:\n${text.slice(from)}`));
        }, ms);
        const check = () => {
          if (!re.test(text.slice(from))) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      });
    },
    get length() {
      return text.length;
    },
  };
}

test(
  'the console, per-job limits and a kernel panic in a real VM',
  { skip, timeout: 1_200_000 },
  () =>
    explained(async () => {
      const dataDir = await tempDataDir('mvirt-guest-tools-');
      const { c } = await qemuDaemon(dataDir);
      ok(await c.call('vm.create', { name: 'box', memoryMiB: 256 }));
      const vm: VmRecord = ok(
        await c.call('vm.start', { vm: 'box', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
      );
      trackPid(vm.pid);

      // The console answers: a shell reads it; Ctrl-C reaches its foreground job.
      const con = await consoleOf(c, vm.id);
      let from = con.length;
      await con.type('echo con-$((6*7))\n');
      await con.until(/con-42/, from);
      from = con.length;
      await con.type('sleep 1000; echo slept-$((2+3))\n');
      // Ctrl-C once the sleep runs (the shell's job, seen from a job of the agent).
      for (;;) {
        const ps = await run(c, { vm: 'box', argv: ['sh', '-c', 'cat /proc/[0-9]*/comm'] });
        if (/^sleep$/m.test(ps.stdout ?? '')) break;
      }
      await con.type('\x03');
      await con.type('echo after-$((1+1))\n');
      await con.until(/after-2/, from);
      assert.doesNotMatch(
        (await run(c, { vm: 'box', argv: ['sh', '-c', 'cat /proc/[0-9]*/comm'] })).stdout ?? '',
        /^sleep$/m,
        'the interrupted sleep is gone',
      );

      // Memory: a job past its own limit is OOM-killed, and only it.
      const hog = ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=48M', 'count=1'];
      const bystander = ok(
        await c.call('job.run', {
          vm: 'box',
          argv: ['sh', '-c', 'read x; echo fine'],
          stdinOpen: true,
        }),
      );
      const calmDone = await c.watch(
        `${ROOT}/job/${bystander.jobId}/state`,
        (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as JobRecord).state === 'succeeded',
        JOB_MS,
      );
      const killed = await run(c, { vm: 'box', argv: hog, limits: { memoryMiB: 24 } });
      assert.equal(killed.state, 'failed');
      assert.equal(killed.oomKilled, true);
      assert.equal(killed.reason, 'killed by the out-of-memory killer');
      assert.deepEqual(killed.limits, { memoryMiB: 24 });
      assert.ok(killed.usage, 'its usage is recorded');
      assert.ok(killed.usage.peakMemoryBytes <= 24 * MiB, `peak ${killed.usage.peakMemoryBytes}`);
      // The other job runs on, and ends as it should once it has its input.
      ok(
        await c.call('job.stdin', {
          jobId: bystander.jobId,
          data: Buffer.from('go\n').toString('base64'),
          eof: true,
        }),
      );
      const calm = JSON.parse((await calmDone.message).toString()) as JobRecord;
      assert.equal(calm.oomKilled, false);
      // With room to spare it fits; from its start in its group, its peak says what it held.
      const fits = await run(c, { vm: 'box', argv: hog, limits: { memoryMiB: 160 } });
      assert.equal(fits.state, 'succeeded', fits.stderr);
      assert.ok(fits.usage && fits.usage.peakMemoryBytes >= 48 * MiB, JSON.stringify(fits.usage));

      // CPU: a fifth of a CPU holds a busy loop to about a fifth of its time.
      const spin = ['timeout', '2', 'sh', '-c', 'while :; do :; done'];
      const slow = await run(c, { vm: 'box', argv: spin, limits: { cpus: 0.2 } });
      const fast = await run(c, { vm: 'box', argv: spin });
      assert.ok(slow.usage && fast.usage);
      console.error(
        `2 s busy loop: ${slow.usage.cpuMs} ms of CPU at cpus 0.2, ${fast.usage.cpuMs} ms unlimited`,
      );
      // The quota is 20 ms per 100 ms period: at most ~400 ms in 2 s (425 seen), two periods of slack.
      assert.ok(slow.usage.cpuMs <= 2000 * 0.2 + 200, `limited: ${slow.usage.cpuMs} ms`);
      assert.ok(fast.usage.cpuMs >= 3 * slow.usage.cpuMs, `unlimited: ${fast.usage.cpuMs} ms`);

      // Limits bigger than the VM are refused before anything runs.
      const big: ReplyEnvelope = await c.call('job.run', {
        vm: 'box',
        argv: ['true'],
        limits: { memoryMiB: 4096 },
      });
      assert.equal(big.ok ? '' : big.error.code, 'INVALID_PARAMS');
      assert.match(big.ok ? '' : big.error.message, /more than the VM's 256 MiB/);

      // A kernel panic: the VM fails saying so (panic=-1 would reboot it silently).
      const failed = await c.watch(
        `${ROOT}/vm/${vm.id}/state`,
        (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as VmRecord).state === 'failed',
        JOB_MS,
      );
      const crash = ok(
        await c.call('job.run', { vm: 'box', argv: ['sh', '-c', 'echo c > /proc/sysrq-trigger'] }),
      );
      const rec = JSON.parse((await failed.message).toString()) as VmRecord;
      assert.match(rec.stateReason ?? '', /^the guest kernel panicked: sysrq triggered crash/);
      const lost = await c.waitFor(
        `${ROOT}/job/${crash.jobId}/state`,
        (_t, p) =>
          p.length > 0 &&
          ['lost', 'failed'].includes((JSON.parse(p.toString()) as JobRecord).state),
        JOB_MS,
      );
      assert.match((JSON.parse(lost.toString()) as JobRecord).reason ?? '', /kernel panicked/);
    }),
);
