/**
 * A guest kernel panic noticed on the console (host/vm/panic.ts): the
 * scanner finds the kernel's line wherever the reads split it, once; through
 * the whole daemon (fake backend, whose console echoes what it is sent), the
 * line makes the VM failed with the panic's message and ends its process,
 * and its running job is lost saying so; another VM on the host runs on.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createPanicScanner } from '../../../host/vm/panic.js';
import type { JobRecord, ReplyEnvelope, VmRecord } from '../../../protocol/rpc.js';
import { procStartTime } from '../../../host/hypervisors/proc.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { removeDir } from '../../../harness/paths.js';
import { rpcClient } from '../../../harness/client.js';
import { startTestDaemon } from '../../../harness/daemon.js';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function result<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

const LINE = '[   12.345678] Kernel panic - not syncing: sysrq triggered crash\n';

test('the scanner finds the line split anywhere, once, and only a whole line', () => {
  for (let cut = 1; cut < LINE.length; cut += 7) {
    const seen: string[] = [];
    const scan = createPanicScanner((m) => seen.push(m));
    scan(Buffer.from(`noise \x00\xff\n${LINE.slice(0, cut)}`, 'latin1'));
    scan(Buffer.from(LINE.slice(cut)));
    scan(Buffer.from(LINE));
    assert.deepEqual(seen, ['sysrq triggered crash'], `cut at ${cut}`);
  }
  const seen: string[] = [];
  const scan = createPanicScanner((m) => seen.push(m));
  scan(Buffer.from('Kernel panic - not syncing: no end of line yet'));
  assert.deepEqual(seen, [], 'not before its line ends');
  scan(Buffer.from('x'.repeat(5000)));
  scan(Buffer.from('kernel panic, said a job\nKernel oops\n'));
  assert.deepEqual(seen, [], 'other text is no panic');
});

test('a panic on the console fails the VM with its message and ends its process', async () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  const d = await startTestDaemon({ hypervisors: [hv] });
  const c = await rpcClient(d);
  cleanups.push(async () => {
    await c.close().catch(() => undefined);
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
  });
  const vm = result(await c.call('vm.create', { name: 'crashy' }));
  const started = result(await c.call('vm.start', { vm: 'crashy', wait: true }));
  // A guest that prints the line itself fails only itself: its neighbour is untouched.
  result(await c.call('vm.create', { name: 'neighbour' }));
  const neighbour = result(await c.call('vm.start', { vm: 'neighbour', wait: true }));
  const job = result(await c.call('job.run', { vm: 'crashy', argv: ['sleep', '60'] }));
  await c.waitFor(
    `${d.root}/job/${job.jobId}/state`,
    (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as JobRecord).state === 'running',
  );
  const failed = await c.watch(
    `${d.root}/vm/${vm.id}/state`,
    (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as VmRecord).state === 'failed',
  );
  const lost = await c.watch(
    `${d.root}/job/${job.jobId}/state`,
    (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as JobRecord).state === 'lost',
  );
  // The fake console echoes what it is sent: the kernel's line comes back out.
  await c.mqtt.publishAsync(`${d.root}/vm/${vm.id}/console/in`, `boot noise\n${LINE}`, { qos: 1 });
  const rec = JSON.parse((await failed.message).toString()) as VmRecord;
  assert.equal(rec.stateReason, 'the guest kernel panicked: sysrq triggered crash');
  const lostRec = JSON.parse((await lost.message).toString()) as JobRecord;
  assert.match(lostRec.reason ?? '', /kernel panicked/);
  // Its process is ended (SIGKILL): a reaped pid has no event to await.
  for (let i = 0; procStartTime(started.pid!) !== null; i++) {
    assert.ok(i < 500, 'the process still runs after 5 s');
    await new Promise((r) => setTimeout(r, 10));
  }
  const got = result(await c.call('vm.get', { vm: 'crashy' }));
  assert.equal(got.state, 'failed', 'the exit that followed did not change it');
  assert.equal(got.stateReason, rec.stateReason);
  const other = result(await c.call('vm.get', { vm: 'neighbour' }));
  assert.equal(other.state, 'ready');
  assert.equal(other.pid, neighbour.pid);
  assert.notEqual(procStartTime(neighbour.pid!), null, 'its process runs on');
});
