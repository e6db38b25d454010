/**
 * /metrics on the --http listener, read by a strict text-format parser and
 * checked against what the RPC API says about the same daemon: VMs by state,
 * allocation, one series per VM labelled by id and name, jobs by state,
 * broker clients, and the boot-stage and job histograms.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { VmTelemetry } from '../../../protocol/metrics.js';
import type { JobState, VmRecord } from '../../../protocol/rpc.js';
import { cleanupAll, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';
import { parsePromText, type PromFamily } from '../../support/prom-text.js';
import { adminBasic } from '../../../harness/test-admin.js';

const MiB = 1024 * 1024;

let j: JobDaemon;
let a: VmRecord;
let b: VmRecord;
before(async () => {
  j = await startJobDaemon({ args: ['--telemetry-interval-ms', '200'] });
  a = await j.serviceVm('prom-a');
  b = await j.serviceVm('prom-b');
  result(await j.c.call('vm.create', { name: 'prom-idle', memoryMiB: 128 }));
  for (let i = 0; i < 2; i++) await j.run({ vm: 'prom-a', argv: ['true'], wait: true });
  await j.run({ vm: 'prom-b', argv: ['false'], wait: true });
});
after(cleanupAll);

type Scrape = Map<string, PromFamily>;

async function scrape(): Promise<Scrape> {
  const res = await fetch(`${j.d.daemon.http!.url}/metrics`, {
    headers: { authorization: adminBasic() },
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parsePromText(await res.text());
}

/** The value of the one series `sample` (a family's own name, or `x_count` …) with these labels. */
function value(
  m: Scrape,
  family: string,
  labels: Record<string, string> = {},
  sample = family,
): number {
  const f = m.get(family);
  assert.ok(f, `${family} is exposed`);
  const s = f.samples.filter(
    (x) => x.name === sample && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  assert.equal(s.length, 1, `one ${sample} series for ${JSON.stringify(labels)}`);
  return s[0]!.value;
}

const labelsOf = (m: Scrape, family: string): Record<string, string>[] =>
  m.get(family)!.samples.map((s) => s.labels);

test('host, VM and job figures on /metrics equal what the API says', async () => {
  for (const v of [a, b]) await j.c.waitFor(`${j.d.root}/vm/${v.id}/telemetry`, () => true);
  const m = await scrape();
  const info = result(await j.c.call('system.info'));
  const vms = result(await j.c.call('vm.list')).vms;

  for (const f of m.values()) {
    assert.ok(f.help.length > 0, `${f.name} has a help text`);
    for (const s of f.samples)
      assert.equal(s.labels.host, 'test-host', `${s.name} has the host label`);
  }
  for (const st of ['ready', 'stopped', 'failed', 'busy'] as const)
    assert.equal(value(m, 'mvirt_vms', { state: st }), info.vms[st] ?? 0, `VMs ${st}`);
  assert.equal(value(m, 'mvirt_allocated_vcpus'), info.allocated.vcpus);
  assert.equal(value(m, 'mvirt_allocated_memory_bytes'), info.allocated.memoryMiB * MiB);
  assert.equal(value(m, 'mvirt_host_cpus'), info.cpus);

  assert.equal(labelsOf(m, 'mvirt_vm_info').length, vms.length, 'one info series per VM');
  for (const v of vms) {
    const l = labelsOf(m, 'mvirt_vm_info').find((x) => x.id === v.id)!;
    assert.deepEqual([l.name, l.state, l.image, l.kind], [v.name, v.state, v.image, v.kind]);
    assert.equal(value(m, 'mvirt_vm_memory_bytes', { id: v.id, name: v.name }), v.memoryMiB * MiB);
    assert.equal(value(m, 'mvirt_vm_vcpus', { id: v.id }), v.vcpus);
  }
  // Guest figures exist for the running VMs only, and are their latest telemetry.
  const withFigures = labelsOf(m, 'mvirt_vm_memory_total_bytes').map((l) => l.name);
  assert.deepEqual(withFigures.sort(), ['prom-a', 'prom-b']);
  const t = VmTelemetry.parse(
    JSON.parse((await j.c.waitFor(`${j.d.root}/vm/${a.id}/telemetry`, () => true)).toString()),
  );
  assert.equal(value(m, 'mvirt_vm_memory_total_bytes', { id: a.id }), t.memTotalMiB * MiB);

  const jobs = async (state: JobState): Promise<number> =>
    result(await j.c.call('job.list', { state })).jobs.length;
  assert.equal(await jobs('succeeded'), 2);
  assert.equal(value(m, 'mvirt_jobs', { state: 'succeeded' }), await jobs('succeeded'));
  assert.equal(value(m, 'mvirt_jobs', { state: 'failed' }), await jobs('failed'));
  assert.equal(value(m, 'mvirt_jobs', { state: 'queued' }), 0);

  assert.ok(value(m, 'mvirt_broker_clients') >= 4, 'two test clients and two agents');
  assert.equal(m.get('mvirt_broker_messages_received_total')!.type, 'counter');
  assert.ok(value(m, 'mvirt_broker_messages_received_total') > 0);
  assert.ok(m.has('process_cpu_seconds_total'), "mvirtd's own process metrics");
});

test('boot stages and job times are histograms fed by state changes', async () => {
  const m = await scrape();
  const h = 'mvirt_vm_boot_stage_seconds';
  assert.equal(m.get(h)!.type, 'histogram');
  // Two boots (prom-a, prom-b); the fake agent reports /init 0.1 s after kernel start.
  for (const stage of ['kernel', 'init', 'connect', 'total'])
    assert.equal(value(m, h, { stage }, `${h}_count`), 2, stage);
  assert.ok(Math.abs(value(m, h, { stage: 'kernel' }, `${h}_sum`) - 0.2) < 1e-9);

  const run = 'mvirt_job_run_seconds';
  assert.equal(value(m, run, { state: 'succeeded' }, `${run}_count`), 2);
  assert.equal(value(m, run, { state: 'failed' }, `${run}_count`), 1);
  const q = 'mvirt_job_queue_seconds';
  assert.equal(value(m, q, {}, `${q}_count`), 3);
  // Cumulative buckets: +Inf holds every observation, and no bucket holds more than a wider one.
  assert.equal(value(m, q, { le: '+Inf' }, `${q}_bucket`), 3);
  const buckets = m
    .get(q)!
    .samples.filter((s) => s.name === `${q}_bucket`)
    .map((s) => [Number(s.labels.le), s.value] as const)
    .sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]![1] >= buckets[i - 1]![1]);
});

test('a stopped VM loses its guest series but keeps its info series', async () => {
  result(await j.c.call('vm.stop', { vm: 'prom-b' }));
  const m = await scrape();
  assert.equal(labelsOf(m, 'mvirt_vm_info').find((l) => l.id === b.id)!.state, 'stopped');
  assert.ok(!labelsOf(m, 'mvirt_vm_cpu_percent').some((l) => l.id === b.id));
  assert.equal(value(m, 'mvirt_vms', { state: 'stopped' }), 2);
});
