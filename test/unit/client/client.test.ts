import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { connectAsync } from 'mqtt';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  brokerOptions,
  createClient,
  topicMatches,
  type MvirtClient,
} from '../../../protocol/client.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import {
  startFakeDaemon,
  startTestBroker,
  type FakeDaemon,
  type TestBroker,
} from '../../support/cli-fake-daemon.js';

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

describe('client against an in-process broker', () => {
  let broker: TestBroker;
  let fake: FakeDaemon;
  before(async () => {
    broker = await startTestBroker();
    fake = await startFakeDaemon(broker.url);
  });
  after(async () => {
    await fake.close();
    await broker.close();
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
        assert.equal(fake.requests.at(-1)?.encoding, encoding);
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
    const before = fake.requests.length;
    try {
      await rejectsWith(c.call('vm.create', { name: 'a/b' }), 'INVALID_PARAMS', /name/);
      assert.equal(fake.requests.length, before);
    } finally {
      await c.close();
    }
  });

  it('times out with TIMEOUT and a hint when nobody replies', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host', timeoutMs: 150 });
    fake.handle('job.list', 'no-reply');
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
      await c.call('vm.delete', { vm: vm.id });
      await seen.until((r) => r === null);
      assert.deepEqual(
        seen.values.map((r) => r?.state ?? null).filter((s, i, a) => s !== a[i - 1]),
        ['stopped', 'starting', 'ready', 'stopped', null],
      );
      await stop();
    } finally {
      await c.close();
    }
  });

  it('watches host events', async () => {
    const c = await createClient({ url: broker.url, hostId: 'test-host' });
    try {
      const seen = collector<{ message: string }>();
      await c.watchEvents(seen.push);
      await fake.publishEvent({
        id: 1,
        at: new Date().toISOString(),
        level: 'info',
        component: 'test',
        message: 'hello',
        objects: [],
      });
      await seen.until((e) => e.message === 'hello');
    } finally {
      await c.close();
    }
  });

  it('uses a connection it is given and leaves it open', async () => {
    const m = await connectAsync(broker.url);
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
    const b = await startTestBroker();
    const dir = mkdtempSync(path.join(tmpdir(), 'mvirt-client-'));
    const sock = path.join(dir, 'mvirt.sock');
    const srv = createServer(b.aedes.handle);
    await new Promise<void>((r) => srv.listen(sock, r));
    const fake = await startFakeDaemon(b.url, { hostId: 'unix-host' });
    try {
      for (const url of [sock, `unix://${sock}`]) {
        const c = await createClient({ url });
        assert.equal(c.hostId, 'unix-host');
        await c.close();
      }
    } finally {
      await fake.close();
      await new Promise((r) => srv.close(r));
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses to guess among several hosts and ignores offline ones', async () => {
    const b = await startTestBroker();
    const one = await startFakeDaemon(b.url, { hostId: 'alpha' });
    const off = await startFakeDaemon(b.url, { hostId: 'gone', online: false });
    try {
      const c = await createClient({ url: b.url });
      assert.equal(c.hostId, 'alpha');
      await c.close();
      const two = await startFakeDaemon(b.url, { hostId: 'beta' });
      await rejectsWith(createClient({ url: b.url }), 'CONFIG_INVALID', /alpha, beta/);
      await two.close();
    } finally {
      await one.close();
      await off.close();
      await b.close();
    }
  });

  it('says no host is online when none announces itself', async () => {
    const b = await startTestBroker();
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
    const b = await startTestBroker();
    const fake = await startFakeDaemon(b.url);
    fake.handle('system.info', 'no-reply');
    const c: MvirtClient = await createClient({
      url: b.url,
      hostId: 'test-host',
      timeoutMs: 60_000,
    });
    const p = c.call('system.info');
    await fake.mqtt.endAsync();
    await b.close();
    await rejectsWith(p, 'CONNECTION_FAILED', /lost the connection/);
    await c.close();
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
