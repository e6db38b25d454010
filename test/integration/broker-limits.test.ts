/**
 * Bad input at the byte level: oversized packets are cut off from their
 * header before the body is buffered, connections that never complete CONNECT
 * time out, and through all of it the broker keeps serving everyone else.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  CONNACK,
  RawClient,
  encodeConnect,
  encodeLength,
  encodePublish,
} from '../../harness/broker-raw.js';
import {
  ROOT,
  connectClient,
  connectOverStream,
  daemonInbox,
  inbox,
  socketPair,
  startBroker,
  withTimeout,
  type TestBroker,
} from '../support/broker-fixtures.js';

const KiB = 1024;

describe('packet size cap and CONNECT timeout', () => {
  let t: TestBroker;
  before(async () => {
    t = await startBroker({
      maxPacketSize: 64 * KiB,
      agentMaxPacketSize: 128 * KiB,
      maxConnectSize: 4 * KiB,
      connectTimeoutMs: 300,
    });
  });
  after(() => t.close());

  /** A bystander that must keep working through every abuse. */
  async function bystanderWorks(): Promise<void> {
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'bystander' });
    const box = inbox(c);
    await c.subscribeAsync('by/stander');
    await c.publishAsync('by/stander', Buffer.alloc(60 * KiB, 1), { qos: 1 });
    assert.equal((await box.wait('by/stander')).length, 60 * KiB);
    await c.endAsync();
  }

  test('a packet just under the cap passes', async () => {
    await bystanderWorks();
  });

  test('an announced oversize is cut off from the header alone, before any body byte', async () => {
    const keeper = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'keeper' });
    const raw = await RawClient.connect(t.tcpPort());
    assert.equal(await raw.handshake({ clientId: 'big-header' }), CONNACK.ACCEPTED);
    // Only the fixed header of a 100 MiB PUBLISH; no body follows.
    raw.send(Buffer.concat([Buffer.from([0x30]), encodeLength(100 * 1024 * KiB)]));
    assert.equal(await raw.next(), null, 'closed without any reply');
    const e = await t.waitForLog(
      (l) => l.msg === 'connection dropped' && l.clientId === 'big-header',
    );
    assert.match(String(e.reason), /announces 104857600 bytes, limit 65536/);
    assert.equal(keeper.connected, true, 'other clients keep their connection');
    await keeper.endAsync();
    await bystanderWorks();
  });

  test('a real oversized publish from mqtt.js closes that connection only', async () => {
    const big = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'big-pub' });
    const closed = new Promise<void>((resolve) => big.once('close', () => resolve()));
    big.publish('x/big', Buffer.alloc(65 * KiB));
    await withTimeout(closed, 'oversized publisher closed');
    big.end(true);
    await bystanderWorks();
  });

  test('an oversized CONNECT, and a first packet that is not CONNECT, are cut off', async () => {
    const a = await RawClient.connect(t.tcpPort());
    a.send(encodeConnect({ clientId: 'c', username: 'u', password: 'p'.repeat(5 * KiB) }));
    assert.equal(await a.next(), null);
    const b = await RawClient.connect(t.tcpPort());
    b.send(encodePublish('pre/connect', 'x'));
    assert.equal(await b.next(), null);
    await t.waitForLog(
      (l) => l.msg === 'connection dropped' && l.reason === 'first packet is not CONNECT',
    );
    await bystanderWorks();
  });

  test('agents have their own cap', async () => {
    const daemon = await daemonInbox(t.broker, `${ROOT}/agent/+/up/#`);
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel('vm-big', host);
    const agent = await connectOverStream(guest, { clientId: 'agent-vm-big' });
    const topic = `${ROOT}/agent/vm-big/up/output`;
    await agent.publishAsync(topic, Buffer.alloc(100 * KiB), { qos: 1 }); // over the controller cap, under the agent's
    await daemon.wait(topic);
    agent.publish(topic, Buffer.alloc(130 * KiB));
    await withTimeout(handle.closed, 'agent channel closed after oversize');
    agent.end(true);
    await daemon.unsubscribe();
  });

  test('a TCP connection that sends nothing is closed after the CONNECT timeout', async () => {
    const raw = await RawClient.connect(t.tcpPort());
    const started = Date.now();
    assert.equal(await withTimeout(raw.next(), 'silent connection closed'), null);
    assert.ok(Date.now() - started >= 250, 'not before the timeout');
  });

  test('a partial CONNECT is closed after the timeout too', async () => {
    const raw = await RawClient.connect(t.tcpPort());
    const connect = encodeConnect({ clientId: 'slowloris' });
    raw.send(connect.subarray(0, connect.length - 3));
    const started = Date.now();
    assert.equal(await withTimeout(raw.next(), 'partial connection closed'), null);
    assert.ok(Date.now() - started >= 250, 'not before the timeout');
    await bystanderWorks();
  });

  test('an agent channel that never says CONNECT is closed too', async () => {
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel('vm-mute', host);
    await withTimeout(handle.closed, 'mute agent channel closed');
    guest.destroy();
  });

  test('the WebSocket listener applies the same cap', async () => {
    const c = await connectClient(t.broker.addresses.ws!, { clientId: 'ws-big' });
    const closed = new Promise<void>((resolve) => c.once('close', () => resolve()));
    c.publish('ws/big', Buffer.alloc(70 * KiB));
    await withTimeout(closed, 'oversized WebSocket publisher closed');
    c.end(true);
    const ok = await connectClient(t.broker.addresses.ws!, { clientId: 'ws-ok' });
    await ok.endAsync();
  });
});
