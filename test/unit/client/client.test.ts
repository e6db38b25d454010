import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { connectController } from '../../../harness/connect.js';
import { adminLogin } from '../../../harness/test-admin.js';
import {
  brokerOptions,
  createClient,
  findHost,
  topicMatches,
  type MvirtClient,
} from '../../../protocol/client.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { EventRecord, VmRecord } from '../../../protocol/rpc.js';
import { startTestDaemon, spyRequests, type RequestSpy } from '../../../harness/daemon.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { removeDir } from '../../../harness/paths.js';
import { cleanupAll, startJobDaemon, type JobDaemon } from '../../support/jobs.js';
import { startAedes } from '../../support/aedes.js';

/** Values pushed by a callback, and a promise for the first one that satisfies a predicate. */
function collector<T>() {
  const values: T[] = [];
  const waiters: { pred: (v: T) => boolean; resolve: (v: T) => void }[] = [];
  return {
    values,
    push: (v: T): void => {
      values.push(v);
      for (const w of [...waiters])
        if (w.pred(v)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(v);
        }
    },
    until: (pred: (v: T) => boolean): Promise<T> => {
      const hit = values.find(pred);
      return hit !== undefined
        ? Promise.resolve(hit)
        : new Promise<T>((resolve) => waiters.push({ pred, resolve }));
    },
  };
}

async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp): Promise<MvirtError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof MvirtError, `expected MvirtError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (re) assert.match(err.message, re);
    return err;
  }
  assert.fail(`expected ${code}`);
}

describe('client against mvirtd (in-process, fake VMs running the real agent core)', () => {
  let j: JobDaemon;
  let spy: RequestSpy;
  const broker = { url: '' };
  before(async () => {
    j = await startJobDaemon();
    spy = await spyRequests(j.d);
    broker.url = j.d.url;
  });
  after(async () => {
    await spy.stop();
    await cleanupAll();
  });

  for (const encoding of ['json', 'cbor'] as const) {
    it(`calls methods and gets typed results (${encoding})`, async () => {
      const c = await createClient({ url: broker.url, hostId: 'test-host', encoding });
      try {
        const info = await c.call('system.info');
        assert.equal(info.hostId, 'test-host');
        const vm = await c.call('vm.create', { name: `enc-${encoding}`, vcpus: 2 });
        assert.equal(vm.vcpus, 2);
        const list = await c.call('vm.list', { state: 'stopped' });
        assert.ok(list.vms.some((v) => v.id === vm.id));
        assert.equal(spy.requests.at(-1)?.encoding, encoding);
        await c.call('vm.delete', { vm: vm.name });
      } finally {
        await c.close();
      }
    });
  }

  it('discovers the single online host', async () => {
    const c = await createClient({ url: broker.url });
    assert.equal(c.hostId, 'test-host');
    assert.equal(c.root, 'mvirt/test-host');
    assert.ok(!c.replyTopic.startsWith(`${c.root}/`), 'reply topic outside the host subtree');
    await c.close();
  });

  it('maps error replies onto MvirtError codes', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host' });
    try {
      await rejectsWith(c.call('vm.get', { vm: 'nope' }), 'VM_NOT_FOUND', /nope/);
      await rejectsWith(c.callRaw('no.such'), 'UNKNOWN_METHOD');
    } finally {
      await c.close();
    }
  });

  it('validates params before publishing', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host' });
    const before = spy.requests.length;
    try {
      await rejectsWith(c.call('vm.create', { name: 'a/b' }), 'INVALID_PARAMS', /name/);
      assert.equal(spy.requests.length, before);
    } finally {
      await c.close();
    }
  });

  it('times out with TIMEOUT and a hint when nobody replies', async () => {
    // A host id no daemon serves on this broker: nobody replies.
    const c = await createClient({ url: broker.url, hostId: 'elsewhere', timeoutMs: 150 });
    try {
      const err = await rejectsWith(c.call('job.list'), 'TIMEOUT', /mvirtd running/);
      assert.deepEqual((err.details as { noReply: boolean }).noReply, true);
    } finally {
      await c.close();
    }
  });

  it('watches retained VM state: current value, changes, delete', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host' });
    try {
      const vm = await c.call('vm.create', { name: 'watched' });
      const seen = collector<VmRecord | null>();
      const stop = await c.watchVm(vm.id, seen.push);
      await seen.until((r) => r?.state === 'stopped');
      await c.call('vm.start', { vm: vm.id, wait: true });
      await seen.until((r) => r?.state === 'ready');
      await c.call('vm.stop', { vm: vm.id });
      await seen.until((r) => r?.state === 'stopped' && r.updatedAt !== vm.updatedAt);
      await c.call('vm.delete', { vm: vm.id });
      await seen.until((r) => r === null);
      assert.deepEqual(
        seen.values.map((r) => r?.state ?? null).filter((s, i, a) => s !== a[i - 1]),
        ['stopped', 'starting', 'ready', 'stopping', 'stopped', null],
      );
      await stop();
    } finally {
      await c.close();
    }
  });

  it('watches host events', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host' });
    try {
      const seen = collector<EventRecord>();
      await c.watchEvents(seen.push);
      const vm = await c.call('vm.create', { name: 'eventful' });
      const ev = await seen.until((e) => e.objects.includes(vm.id));
      assert.equal(ev.level, 'audit');
      assert.match(ev.message, /eventful/);
    } finally {
      await c.close();
    }
  });

  it('uses a connection it is given and leaves it open', async () => {
    const m = await connectController(broker.url);
    const c = await createClient({ mqtt: m, hostId: 'test-host' });
    assert.equal((await c.call('system.info')).hostId, 'test-host');
    await c.close();
    assert.equal(m.connected, true);
    await m.endAsync();
  });
});

describe('client connection and discovery failures', () => {
  it('says CONNECTION_FAILED with the URL and what to do', async () => {
    const srv: Server = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r)); // a port where nothing listens
    const url = `mqtt://127.0.0.1:${port}`;
    await rejectsWith(
      createClient({ url, hostId: 'h' }),
      'CONNECTION_FAILED',
      /127\.0\.0\.1.*mvirtd/,
    );
  });

  it('connects over a unix socket path', async () => {
    const hv = createFakeHypervisor();
    const d = await startTestDaemon({ hypervisors: [hv] });
    try {
      const sock = d.daemon.broker.addresses.unix!;
      for (const url of [sock, `unix://${sock}`]) {
        const c = await createClient({ url });
        assert.equal(c.hostId, 'test-host');
        await c.close();
      }
    } finally {
      await d.stop();
      killFakes(hv);
      await removeDir(d.dataDir);
    }
  });

  it('logs in over TCP, through its own socket or MQTT.js connect() (credentials in the URL)', async () => {
    const hv = createFakeHypervisor();
    const d = await startTestDaemon({ hypervisors: [hv] });
    try {
      const tcp = d.daemon.broker.addresses.tcp!;
      const { username, password } = adminLogin();
      const login = `${encodeURIComponent(username)}:${encodeURIComponent(password)}`;
      for (const o of [
        { url: `mqtt://${tcp}`, username, password, writeCache: false },
        { url: `tcp://${tcp}/`, username, password },
        { url: `mqtt://${login}@${tcp}` },
      ]) {
        const c = await createClient(o);
        assert.equal((await c.call('system.info')).hostId, 'test-host', o.url);
        await c.close();
      }
      await rejectsWith(
        createClient({ url: `mqtt://${tcp}`, username, password: 'wrong' }),
        'NOT_AUTHORIZED',
      );
    } finally {
      await d.stop();
      killFakes(hv);
      await removeDir(d.dataDir);
    }
  });

  it('refuses to guess among several hosts and ignores offline ones', async () => {
    // Several hosts share a broker only beyond one machine (an uplink): what the
    // client sees of them is their retained status, published here as mvirtd does.
    const b = await startAedes();
    try {
      await b.announce('alpha', true);
      await b.announce('gone', false);
      const c = await createClient({ url: b.url });
      assert.equal(c.hostId, 'alpha');
      await c.close();
      await b.announce('beta', true);
      await rejectsWith(createClient({ url: b.url }), 'CONFIG_INVALID', /alpha, beta/);
    } finally {
      await b.close();
    }
  });

  it('takes the host the broker names (<prefix>/_broker) at once, over any other status', async () => {
    // mvirtd's embedded broker retains whose it is; here published by hand.
    const b = await startAedes();
    try {
      await b.announce('alpha', true);
      await b.announce('planted', true); // a status any controller could retain here
      await b.announceOwner('alpha');
      const c = await createClient({ url: b.url });
      assert.equal(c.hostId, 'alpha');
      await c.close();
      // No quiet period to sit out: a long one is never waited for.
      const m = await connectController(b.url);
      const t0 = performance.now();
      assert.equal(
        await findHost(m, 'mvirt', b.url, { quietMs: 5000, timeoutMs: 10_000 }),
        'alpha',
      );
      assert.ok(performance.now() - t0 < 2500, `${performance.now() - t0} ms`);
      await m.endAsync();
      // A record that is not one (here: no hostId) is ignored: the statuses decide.
      await b.announceOwner(null);
      await rejectsWith(createClient({ url: b.url }), 'CONFIG_INVALID', /alpha, planted/);
    } finally {
      await b.close();
    }
  });

  it('finds the host by its status where the broker will not say whose it is', async () => {
    const b = await startAedes();
    try {
      await b.announce('alpha', true);
      await b.announceOwner('beta');
      // A broker whose ACL refuses the owner topic: discovery goes on without it.
      b.aedes.authorizeSubscribe = (_client, sub, done) =>
        done(null, sub.topic === 'mvirt/_broker' ? null : sub);
      const c = await createClient({ url: b.url });
      assert.equal(c.hostId, 'alpha');
      await c.close();
    } finally {
      await b.close();
    }
  });

  it('says no host is online when none announces itself', async () => {
    const b = await startAedes();
    try {
      await rejectsWith(
        createClient({ url: b.url, prefix: 'other', discoveryTimeoutMs: 300 }),
        'CONNECTION_FAILED',
        /prefix 'other'/,
      );
    } finally {
      await b.close();
    }
  });

  it('fails pending calls when the connection drops', async () => {
    // A VM whose agent never says hello: vm.start {wait} stays pending.
    const hv = createFakeHypervisor({ agent: 'silent' });
    const d = await startTestDaemon({ hypervisors: [hv] });
    try {
      const c: MvirtClient = await createClient({
        url: d.url,
        hostId: 'test-host',
        timeoutMs: 60_000,
      });
      const vm = await c.call('vm.create', { name: 'mute' });
      const p = c.call('vm.start', { vm: 'mute', wait: true });
      await new Promise<void>(
        (resolve) => void c.watchVm(vm.id, (r) => void (r?.state === 'starting' && resolve())),
      );
      await d.stop();
      await rejectsWith(p, 'CONNECTION_FAILED', /lost the connection/);
      await c.close();
    } finally {
      killFakes(hv);
      await removeDir(d.dataDir);
    }
  });
});

describe('client helpers', () => {
  it('matches topic filters', () => {
    assert.ok(topicMatches('a/+/c', 'a/b/c'));
    assert.ok(topicMatches('a/#', 'a/b/c'));
    assert.ok(topicMatches('a/#', 'a'));
    assert.ok(!topicMatches('a/+', 'a/b/c'));
    assert.ok(!topicMatches('+/x', '$SYS/x'));
    assert.ok(!topicMatches('a/b', 'a/b/c'));
  });

  it('turns socket paths into unix connections', () => {
    assert.deepEqual(
      brokerOptions('/var/lib/mvirt/mvirt.sock').opts.path,
      '/var/lib/mvirt/mvirt.sock',
    );
    assert.equal(brokerOptions('unix:///x.sock').opts.unixSocket, true);
    assert.equal(brokerOptions('mqtt://h:1').url, 'mqtt://h:1');
  });
});
