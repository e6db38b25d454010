/**
 * Telemetry end to end on a fake VM running the real agent core (it samples
 * this machine's /proc): republished on vm/<id>/telemetry in the public
 * shape, host figures in the retained status, roll-ups in the real SQLite
 * file answered by metrics.query, and still there after a daemon restart.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { VmTelemetry } from '../../../protocol/metrics.js';
import { HostStatus } from '../../../protocol/records.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

const FAST = ['--telemetry-interval-ms', '200', '--status-interval-ms', '200'];

let j: JobDaemon;
let vm: VmRecord;
before(async () => {
  j = await startJobDaemon({ args: FAST });
  vm = await j.serviceVm('tele');
});
after(cleanupAll);

/** The next `n` telemetry messages of a VM, parsed with the public schema. */
async function samples(vmId: string, n: number): Promise<VmTelemetry[]> {
  const got: VmTelemetry[] = [];
  await j.c.waitFor(`${j.d.root}/vm/${vmId}/telemetry`, (_t, p) => {
    got.push(VmTelemetry.parse(JSON.parse(p.toString())));
    return got.length >= n;
  });
  return got;
}

test('agent telemetry is republished on vm/<id>/telemetry with the VM id, receipt time and totals', async () => {
  const before = Date.now();
  const [a, b] = await samples(vm.id, 2);
  for (const t of [a!, b!]) {
    assert.equal(t.vmId, vm.id);
    assert.ok(t.receivedAt >= before && t.receivedAt <= Date.now(), 'host receipt time');
    assert.ok(t.memTotalMiB > 0 && t.memUsedMiB > 0 && t.memUsedMiB <= t.memTotalMiB);
    assert.ok(t.uptimeS > 0);
    assert.ok(t.disk.length > 0, 'the root filesystem at least');
    assert.equal(
      t.diskUsedBytes,
      t.disk.reduce((s, d) => s + d.usedBytes, 0),
    );
    assert.equal(
      t.netRxBytes,
      t.net.filter((n) => n.iface !== 'lo').reduce((s, n) => s + n.rxBytes, 0),
    );
  }
  assert.ok(b!.receivedAt > a!.receivedAt);
});

test('the retained host status carries host figures, broker counters and jobs by state', async () => {
  const p = await j.c.waitFor(`${j.d.root}/status`, (_t, p) => {
    const s = JSON.parse(p.toString()) as { figures?: unknown };
    return s.figures !== undefined;
  });
  const s = HostStatus.parse(JSON.parse(p.toString()));
  assert.equal(s.online, true);
  assert.ok(s.figures!.memTotalMiB > 0 && s.figures!.cpuPercent >= 0);
  assert.ok(s.figures!.daemon.rssMiB > 10, 'mvirtd resident memory');
  assert.ok(s.broker!.clients >= 2, 'this test has two clients connected');
  assert.ok(s.broker!.messagesIn > 0);
  assert.equal(s.vms?.ready, 1);
  assert.equal(s.allocated?.vcpus, vm.vcpus);
});

test('metrics.query returns 10 s roll-ups of a VM from the SQLite store, re-aggregated by step', async () => {
  const seen = await samples(vm.id, 3);
  const from = Date.now() - 120_000;
  const r = result(await j.c.call('metrics.query', { vm: 'tele', from }));
  assert.equal(r.object, vm.id);
  assert.equal(r.resolution, 10);
  assert.equal(r.step, 10);
  assert.ok(r.points.length >= 1);
  const total = r.points.reduce((n, p) => n + p.samples, 0);
  assert.ok(total >= 3, `every sample so far is in a bucket (${total})`);
  for (const p of r.points) {
    assert.equal(p.t % 10_000, 0, 'buckets start on 10 s boundaries');
    assert.ok(p.cpuMaxPercent >= p.cpuPercent);
    assert.ok(p.memUsedMiB > 0);
  }
  assert.equal(r.points.at(-1)!.memTotalMiB, seen.at(-1)!.memTotalMiB);
  // The same samples in 60 s steps: fewer points, the same samples.
  const m = result(await j.c.call('metrics.query', { vm: vm.id, from, step: 60 }));
  assert.equal(m.step, 60);
  assert.ok(m.points.length <= 3);
  assert.ok(m.points.every((p) => p.t % 60_000 === 0));
  const later = m.points.reduce((n, p) => n + p.samples, 0);
  assert.ok(later >= total, 'no sample is lost by coarser steps');
});

test('metrics.query without vm returns the host series; bad ranges and unknown VMs are refused', async () => {
  await j.c.waitFor(`${j.d.root}/status`, () => true);
  const h = result(
    await j.c.call('metrics.query', {
      from: new Date(Date.now() - 60_000).toISOString(),
    }),
  );
  assert.equal(h.object, 'host');
  assert.ok(h.points.length >= 1 && h.points[0]!.memTotalMiB > 0);

  const now = Date.now();
  assert.equal(
    errorOf(await j.c.call('metrics.query', { from: now, to: now - 1000 })).code,
    'INVALID_PARAMS',
  );
  assert.equal(
    errorOf(await j.c.call('metrics.query', { from: now - 1000, step: 15 })).code,
    'INVALID_PARAMS',
  );
  assert.equal(
    errorOf(await j.c.call('metrics.query', { from: now - 400 * 86_400_000, step: 10 })).code,
    'INVALID_PARAMS',
    'too many points',
  );
  assert.equal(
    errorOf(await j.c.call('metrics.query', { vm: 'nope', from: now - 1000 })).code,
    'VM_NOT_FOUND',
  );
  assert.equal(
    errorOf(await j.c.send('metrics.query', { from: now - 1000, extra: 1 })).code,
    'INVALID_PARAMS',
    'unknown fields are refused',
  );
  assert.equal(
    errorOf(await j.c.send('metrics.query', {})).code,
    'INVALID_PARAMS',
    'from is required',
  );
});

test('roll-ups survive a daemon restart (they are in mvirt.db)', async () => {
  await samples(vm.id, 2);
  const from = Date.now() - 120_000;
  const beforeStop = result(await j.c.call('metrics.query', { vm: vm.id, from }));
  const n = beforeStop.points.reduce((s, p) => s + p.samples, 0);
  await j.stopDaemon();
  const again = await startJobDaemon({ dataDir: j.dataDir, hv: j.hv, args: FAST });
  const r = result(await again.c.call('metrics.query', { vm: vm.id, from }));
  assert.ok(
    r.points.reduce((s, p) => s + p.samples, 0) >= n,
    'every sample counted before the restart is still there',
  );
});
