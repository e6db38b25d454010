/**
 * Controller ACL over real connections: what a controller may publish and
 * subscribe to, that forging daemon topics closes its connection, that bad
 * topics are refused, and that `#` never shows agent traffic.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RawClient, encodePublish } from '../../harness/broker-raw.js';
import {
  ROOT,
  closedOf,
  connectClient,
  connectOverStream,
  daemonInbox,
  inbox,
  socketPair,
  startBroker,
  type TestBroker,
} from '../support/broker-fixtures.js';

describe('controller ACL', () => {
  let t: TestBroker;
  let url: string;
  before(async () => {
    t = await startBroker();
    url = `mqtt://${t.broker.addresses.tcp}`;
  });
  after(() => t.close());

  test('rpc and console/in reach the daemon; own topics reach other controllers', async () => {
    const daemon = await daemonInbox(t.broker, `${ROOT}/#`);
    const c = await connectClient(url, { clientId: 'ctl-ok' });
    const peer = await connectClient(url, { clientId: 'ctl-peer' });
    const box = inbox(peer);
    await peer.subscribeAsync('ctl/ok/#');
    await c.publishAsync(`${ROOT}/rpc/system.info`, '{"id":"1"}', { qos: 1 });
    await c.publishAsync(`${ROOT}/vm/vm-1/console/in`, 'ls\n', { qos: 1 });
    await c.publishAsync('ctl/ok/replies', 'hi', { qos: 1, retain: true });
    await daemon.wait(`${ROOT}/rpc/system.info`);
    await daemon.wait(`${ROOT}/vm/vm-1/console/in`);
    assert.equal(await box.wait('ctl/ok/replies'), 'hi');
    await daemon.unsubscribe();
    await Promise.all([c.endAsync(), peer.endAsync()]);
  });

  test('forging daemon topics closes the connection and never reaches subscribers', async () => {
    const watcher = await connectClient(url, { clientId: 'watcher' });
    const box = inbox(watcher);
    await watcher.subscribeAsync('#');
    const forged: Array<[string, { retain?: boolean }]> = [
      [`${ROOT}/status`, { retain: true }],
      [`${ROOT}/vm/vm-1/state`, { retain: true }],
      [`${ROOT}/vm/vm-1/events`, {}],
      [`${ROOT}/job/j-1/state`, {}],
      [`${ROOT}/agent/vm-1/down/exec`, {}],
      [`${ROOT}/agent/vm-1/up/hello`, {}],
      [`${ROOT}/rpc/vm.create`, { retain: true }],
      ['$SYS/forged', {}],
    ];
    for (const [topic, o] of forged) {
      const c = await connectClient(url, { clientId: 'forger' });
      const closed = closedOf(c);
      c.publish(topic, 'forged', { qos: 0, ...o });
      await closed;
      await t.waitForLog(
        (l) => l.msg === 'publish refused, closing connection' && l.topic === topic,
      );
    }
    const refusal = t.logs.find((l) => l.msg === 'publish refused, closing connection');
    assert.equal(refusal?.clientId, 'forger');
    assert.equal(refusal?.level, 40);
    // A fence published after every forgery: everything before it has been routed.
    await t.broker.publish('fence/acl', 'x');
    await box.wait('fence/acl');
    assert.deepEqual(
      box.topics().filter((x) => x.includes('forged') || x.startsWith(ROOT)),
      [],
    );
    await watcher.endAsync();
  });

  test('retained state cannot be forged even with QoS 1', async () => {
    await t.broker.publish(`${ROOT}/status`, '{"online":true}', { retain: true });
    const c = await connectClient(url, { clientId: 'forger-q1' });
    const closed = closedOf(c);
    c.publish(`${ROOT}/status`, '{"online":false}', { qos: 1, retain: true });
    await closed;
    const reader = await connectClient(url, { clientId: 'reader' });
    const box = inbox(reader);
    await reader.subscribeAsync(`${ROOT}/status`);
    assert.equal(await box.wait(`${ROOT}/status`), '{"online":true}');
    await reader.endAsync();
  });

  test('the broker retains whose it is (<prefix>/_broker); no controller may say otherwise', async () => {
    const c = await connectClient(url, { clientId: 'owner-forger' });
    const closed = closedOf(c);
    c.publish('mvirt/_broker', '{"hostId":"evil"}', { qos: 1, retain: true });
    await closed;
    const reader = await connectClient(url, { clientId: 'owner-reader' });
    const box = inbox(reader);
    await reader.subscribeAsync('mvirt/_broker');
    assert.deepEqual(JSON.parse(await box.wait('mvirt/_broker')), { hostId: 'test' });
    await reader.endAsync();
  });

  test('subscribing to the agent subtree is refused (SUBACK 0x80), the client stays', async () => {
    const c = await connectClient(url, { clientId: 'nosy' });
    for (const f of [`${ROOT}/agent/#`, `${ROOT}/agent/vm-1/up/+`]) {
      await assert.rejects(
        c.subscribeAsync(f),
        (e: Error & { packet?: { granted?: number[] } }) => e.packet?.granted?.[0] === 0x80,
        f,
      );
    }
    assert.equal(c.connected, true);
    await c.endAsync();
  });

  test('a `#` subscriber never receives agent traffic; the daemon does', async () => {
    const daemon = await daemonInbox(t.broker, `${ROOT}/agent/+/up/#`);
    const c = await connectClient(url, { clientId: 'hash-all' });
    const box = inbox(c);
    await c.subscribeAsync(['#', `${ROOT}/#`, 'mvirt/+/agent/#']);
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel('vm-7', host);
    const agent = await connectOverStream(guest, { clientId: 'agent-vm-7' });
    await agent.publishAsync(`${ROOT}/agent/vm-7/up/hello`, 'secret', { qos: 1 });
    await daemon.wait(`${ROOT}/agent/vm-7/up/hello`);
    await t.broker.publish(`${ROOT}/agent/vm-7/down/exec`, 'secret-down');
    await t.broker.publish('fence/hash', 'x');
    await box.wait('fence/hash');
    assert.deepEqual(
      box.topics().filter((x) => x.includes('/agent/')),
      [],
    );
    await Promise.all([c.endAsync(), agent.endAsync()]);
    await handle.closed;
    await daemon.unsubscribe();
  });

  test('bad publish topics close the connection; the broker is unharmed', async () => {
    const bad = [
      'a/+/b',
      'a/#',
      'nul\u0000topic',
      'bell\u0007',
      '',
      'x'.repeat(600),
      'a/'.repeat(20) + 'z',
    ];
    for (const topic of bad) {
      const raw = await RawClient.connect(t.tcpPort());
      assert.equal(await raw.handshake({ clientId: 'badtopic' }), 0);
      raw.send(encodePublish(topic, 'x'));
      assert.equal(await raw.next(), null, `connection closed for ${JSON.stringify(topic)}`);
    }
    const c = await connectClient(url, { clientId: 'still-fine' });
    const box = inbox(c);
    await c.subscribeAsync('fine');
    await c.publishAsync('fine', 'yes');
    assert.equal(await box.wait('fine'), 'yes');
    await c.endAsync();
  });

  test('bad subscription filters are refused, good ones in the same packet granted', async () => {
    const raw = await RawClient.connect(t.tcpPort());
    assert.equal(await raw.handshake({ clientId: 'badfilter' }), 0);
    assert.deepEqual(
      await raw.subscribe(['ok/+', 'nul\u0000/#', 'ctl\u0001', `${ROOT}/agent/#`]),
      [0, 0x80, 0x80, 0x80],
    );
    raw.destroy();
  });
});
