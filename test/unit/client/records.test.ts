/**
 * The client validates what it receives against the protocol's record
 * schemas: every reply by its method (RESULTS) and every watched record. A
 * real mvirtd (fake VMs running the real agent core) must pass; a malformed
 * record, which no real daemon sends, comes from a bare responder on a plain
 * broker and must fail with INVALID_RECORD, naming the bad field.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { Aedes } from 'aedes';
import { connectAsync, type MqttClient } from 'mqtt';
import { createClient, type MvirtClient } from '../../../protocol/client.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { VmRecord } from '../../../protocol/records.js';
import { isTerminalJob } from '../../../protocol/states.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { removeDir } from '../../../harness/paths.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';

const AT = '2026-01-01T00:00:00.000Z';
const GOOD_VM: VmRecord = {
  id: 'vm-0123456789ab',
  name: 'web-1',
  state: 'stopped',
  vcpus: 1,
  memoryMiB: 256,
  kind: 'service',
  image: 'default',
  backend: 'qemu',
  network: { mode: 'user' },
  metadata: {},
  createdAt: AT,
  updatedAt: AT,
};

async function invalid(p: Promise<unknown>, field: RegExp): Promise<MvirtError> {
  const err = await p.then(
    () => assert.fail('expected INVALID_RECORD'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof MvirtError, String(err));
  assert.equal(err.code, 'INVALID_RECORD', err.message);
  assert.match(err.message, field);
  return err;
}

describe('client record validation: malformed replies and records', () => {
  const HOST = 'rec-host';
  let aedes: Aedes;
  let close: () => Promise<void>;
  let responder: MqttClient;
  let c: MvirtClient;
  let url: string;
  /** What the responder answers per method. */
  const results = new Map<string, unknown>();

  before(async () => {
    aedes = await Aedes.createBroker();
    const server = createServer(aedes.handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = async () => {
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    };
    responder = await connectAsync(url, { clientId: 'responder' });
    responder.on('message', (topic, payload) => {
      const req = JSON.parse(payload.toString()) as { id: string; replyTo: string };
      const result = results.get(topic.split('/').at(-1)!);
      void responder.publishAsync(req.replyTo, JSON.stringify({ id: req.id, ok: true, result }));
    });
    await responder.subscribeAsync(`mvirt/${HOST}/rpc/+`);
    c = await createClient({ url, hostId: HOST });
  });
  after(async () => {
    await c?.close();
    await responder?.endAsync();
    await close?.();
  });

  it('passes a good record through', async () => {
    results.set('vm.get', GOOD_VM);
    assert.deepEqual(await c.call('vm.get', { vm: 'web-1' }), GOOD_VM);
  });

  it('fails with INVALID_RECORD on a field of the wrong type, naming it', async () => {
    results.set('vm.get', { ...GOOD_VM, vcpus: '1' });
    const err = await invalid(c.call('vm.get', { vm: 'web-1' }), /vm\.get reply: vcpus:/);
    assert.deepEqual((err.details as { path: string[] }[])[0]?.path, ['vcpus']);
  });

  it('fails on an unknown state, a missing field and an unknown field', async () => {
    results.set('vm.get', { ...GOOD_VM, state: 'sleeping' });
    await invalid(c.call('vm.get', { vm: 'web-1' }), /state:/);
    const { createdAt: _, ...noCreatedAt } = GOOD_VM;
    results.set('vm.get', noCreatedAt);
    await invalid(c.call('vm.get', { vm: 'web-1' }), /createdAt:/);
    results.set('vm.get', { ...GOOD_VM, secret: 'x' });
    await invalid(c.call('vm.get', { vm: 'web-1' }), /unknown field\(s\) secret/);
  });

  it('checks the result of each method against its own schema', async () => {
    results.set('vm.list', { vms: [GOOD_VM, { ...GOOD_VM, memoryMiB: -1 }] });
    await invalid(c.call('vm.list'), /vms\.1\.memoryMiB:/);
    results.set('vm.delete', { deleted: true });
    await invalid(c.call('vm.delete', { vm: 'web-1' }), /unknown field/);
    // A VM record is not a job record.
    results.set('job.get', GOOD_VM);
    await invalid(c.call('job.get', { jobId: 'job-0123456789ab' }), /job\.get reply/);
  });

  it('with validate:false hands over what it got', async () => {
    const raw = await createClient({ url, hostId: HOST, validate: false });
    try {
      results.set('vm.get', { ...GOOD_VM, vcpus: '1' });
      assert.equal((await raw.call('vm.get', { vm: 'web-1' })).vcpus, '1');
    } finally {
      await raw.close();
    }
  });

  it('watchers pass good records, report malformed ones and go on', async () => {
    const topic = `mvirt/${HOST}/vm/${GOOD_VM.id}/state`;
    await responder.publishAsync(topic, JSON.stringify({ ...GOOD_VM, kind: 'pet' }), {
      retain: true,
      qos: 1,
    });
    const got: (VmRecord | null)[] = [];
    const bad: MvirtError[] = [];
    let wake: () => void = () => {};
    const next = (): Promise<void> => new Promise((resolve) => (wake = resolve));
    let seen = next();
    const stop = await c.watchVm(
      GOOD_VM.id,
      (v) => {
        got.push(v);
        wake();
      },
      (e) => {
        bad.push(e);
        wake();
      },
    );
    await seen;
    assert.equal(bad.length, 1);
    assert.equal(bad[0]!.code, 'INVALID_RECORD');
    assert.match(bad[0]!.message, /kind:/);
    assert.equal(got.length, 0);
    seen = next();
    await responder.publishAsync(topic, JSON.stringify({ ...GOOD_VM, state: 'starting' }), {
      retain: true,
      qos: 1,
    });
    await seen;
    assert.equal(got.at(-1)?.state, 'starting');
    seen = next();
    await responder.publishAsync(topic, '', { retain: true, qos: 1 });
    await seen;
    assert.equal(got.at(-1), null);
    seen = next();
    await responder.publishAsync(topic, 'not json', { qos: 1 });
    await seen;
    assert.equal(bad.length, 2);
    assert.match(bad[1]!.message, /undecodable/);
    await stop();
  });

  it('validates the host status it watches', async () => {
    const topic = `mvirt/${HOST}/status`;
    const bad: MvirtError[] = [];
    let wake: () => void = () => {};
    const seen = new Promise<void>((resolve) => (wake = resolve));
    const stop = await c.watchStatus(
      () => assert.fail('a malformed status reached the callback'),
      (e) => {
        bad.push(e);
        wake();
      },
    );
    await responder.publishAsync(topic, JSON.stringify({ hostId: HOST, online: 'yes', at: AT }));
    await seen;
    assert.match(bad[0]!.message, /online:/);
    await stop();
  });
});

describe('client record validation: every reply of the real mvirtd passes', () => {
  const hv = createFakeHypervisor({ agent: 'real' });
  let d: TestDaemon;
  let c: MvirtClient;
  const invalidRecords: MvirtError[] = [];

  before(async () => {
    d = await startTestDaemon({ hypervisors: [hv] });
    c = await createClient({ url: d.url, hostId: 'test-host' });
  });
  after(async () => {
    await c?.close();
    await d?.daemon.vms.shutdown(true).catch(() => undefined);
    await d?.stop();
    killFakes(hv);
    if (d) await removeDir(d.dataDir);
  });

  it('VM, job, pool, event, metrics and system records', async () => {
    const states: string[] = [];
    const stopWatch = await c.watchStatus(
      () => {},
      (e) => invalidRecords.push(e),
    );
    const info = await c.call('system.info');
    assert.equal(info.hostId, 'test-host');
    const vm = await c.call('vm.create', { name: 'rec-1', metadata: { role: 'test' } });
    const stopVm = await c.watchVm(
      vm.id,
      (v) => v && states.push(v.state),
      (e) => invalidRecords.push(e),
    );
    const up = await c.call('vm.start', { vm: vm.id, wait: true }, { timeoutMs: 60_000 });
    assert.equal(up.state, 'ready');
    assert.ok(up.boot, 'a ready VM carries its boot timeline');
    assert.ok((await c.call('vm.list')).vms.some((v) => v.id === vm.id));

    const job = await c.call(
      'job.run',
      { vm: vm.id, argv: ['sh', '-c', 'echo out; echo err >&2'], wait: true },
      { timeoutMs: 60_000 },
    );
    assert.ok(isTerminalJob(job.state));
    assert.equal(job.stdout, 'out\n');
    assert.equal((await c.call('job.get', { jobId: job.jobId })).state, job.state);
    assert.ok((await c.call('job.list')).jobs.some((j) => j.jobId === job.jobId));
    const logs = await c.call('job.logs', { jobId: job.jobId });
    assert.deepEqual(
      logs.chunks.map((ch) => ch.stream),
      ['stdout', 'stderr'],
    );

    await c.call('pool.set', { name: 'rec-pool', min: 0 });
    assert.equal((await c.call('pool.get', { name: 'rec-pool' })).min, 0);
    assert.ok((await c.call('pool.list')).pools.length >= 1);
    assert.deepEqual(await c.call('pool.delete', { name: 'rec-pool' }), {});

    assert.ok((await c.call('events.query', { objectId: vm.id })).events.length > 0);
    const m = await c.call('metrics.query', { from: Date.now() - 60_000 });
    assert.equal(m.object, 'host');

    await c.call('vm.stop', { vm: vm.id }, { timeoutMs: 60_000 });
    assert.deepEqual(await c.call('vm.delete', { vm: vm.id }), {});
    await stopVm();
    await stopWatch();
    assert.ok(states.includes('ready'), states.join(' '));
    assert.deepEqual(invalidRecords, []);
  });
});
