/**
 * Transports and interop: WebSocket, unix socket, Debian's mosquitto_pub and
 * mosquitto_sub against the embedded broker, the daemon's last will on close,
 * stale socket handling, counters.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { RawClient } from '../../harness/broker-raw.js';
import {
  ROOT,
  closedOf,
  connectClient,
  daemonInbox,
  inbox,
  socketPair,
  startBroker,
  TEST_ADMIN,
  withTimeout,
  type TestBroker,
} from '../support/broker-fixtures.js';

// TCP controllers log in (loopback is not an identity): mosquitto as the test admin.
const login = ['-u', TEST_ADMIN.username, '-P', TEST_ADMIN.password];

const run = promisify(execFile);

describe('transports and interop', () => {
  let t: TestBroker;
  let port: string;
  before(async () => {
    t = await startBroker();
    port = String(t.tcpPort());
  });
  after(() => t.close());

  test('an MQTT.js WebSocket client talks to a TCP client', async () => {
    const ws = await connectClient(t.broker.addresses.ws!, { clientId: 'browser-1' });
    const tcp = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'tcp-1' });
    const wsBox = inbox(ws);
    const tcpBox = inbox(tcp);
    await ws.subscribeAsync('x/to-ws');
    await tcp.subscribeAsync('x/to-tcp');
    await tcp.publishAsync('x/to-ws', 'over ws', { qos: 1 });
    await ws.publishAsync('x/to-tcp', 'from ws', { qos: 1 });
    assert.equal(await wsBox.wait('x/to-ws'), 'over ws');
    assert.equal(await tcpBox.wait('x/to-tcp'), 'from ws');
    await Promise.all([ws.endAsync(), tcp.endAsync()]);
  });

  test('the WebSocket server picks the mqtt subprotocol', async () => {
    const sock = new WebSocket(t.broker.addresses.ws!, ['mqtt']);
    await withTimeout(
      new Promise((resolve, reject) => {
        sock.once('open', resolve);
        sock.once('error', reject);
      }),
      'ws open',
    );
    assert.equal(sock.protocol, 'mqtt');
    sock.close();
  });

  test('mosquitto_pub → MQTT.js subscriber', async () => {
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'sub-interop' });
    const box = inbox(c);
    await c.subscribeAsync('interop/in');
    await run('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      port,
      ...login,
      '-t',
      'interop/in',
      '-m',
      'from mosquitto_pub',
      '-q',
      '1',
    ]);
    assert.equal(await box.wait('interop/in'), 'from mosquitto_pub');
    await c.endAsync();
  });

  test('mosquitto_pub to the rpc topic reaches the daemon; to a state topic it is refused', async () => {
    const daemon = await daemonInbox(t.broker, `${ROOT}/#`);
    await run('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      port,
      ...login,
      '-t',
      `${ROOT}/rpc/system.info`,
      '-m',
      '{"id":"1"}',
    ]);
    await daemon.wait(`${ROOT}/rpc/system.info`);
    await run('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      port,
      ...login,
      '-i',
      'mosq-forger',
      '-t',
      `${ROOT}/vm/v/state`,
      '-m',
      '{}',
      '-q',
      '1',
    ]).catch(() => undefined);
    await t.waitForLog(
      (l) => l.msg === 'publish refused, closing connection' && l.clientId === 'mosq-forger',
    );
    assert.equal(
      daemon.got.some((g) => g.topic === `${ROOT}/vm/v/state`),
      false,
    );
    await daemon.unsubscribe();
  });

  test('daemon publisher → mosquitto_sub (retained status)', async () => {
    await t.broker.publish(`${ROOT}/status`, '{"hostId":"test","online":true}', { retain: true });
    const { stdout } = await run('mosquitto_sub', [
      '-h',
      '127.0.0.1',
      '-p',
      port,
      ...login,
      '-t',
      `${ROOT}/status`,
      '-C',
      '1',
      '-W',
      '10',
      '-v',
    ]);
    assert.equal(stdout.trim(), `${ROOT}/status {"hostId":"test","online":true}`);
  });

  test('MQTT.js publisher → mosquitto_sub (live message)', async () => {
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'pub-interop' });
    // aedes announces every subscription on $SYS (which controllers may not
    // read; the daemon's own bus may): publish once mosquitto_sub's is in.
    let seen: () => void = () => undefined;
    const subscribed = new Promise<void>((resolve) => (seen = resolve));
    const stop = await t.broker.subscribe('$SYS/+/new/subscribes', (_topic, payload) => {
      if (payload.toString().includes('"mosq-sub"')) seen();
    });
    const sub = spawn('mosquitto_sub', [
      '-h',
      '127.0.0.1',
      '-p',
      port,
      ...login,
      '-i',
      'mosq-sub',
      '-t',
      'interop/out',
      '-C',
      '1',
      '-W',
      '10',
    ]);
    let out = '';
    sub.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => sub.once('exit', resolve));
    await withTimeout(subscribed, 'mosquitto_sub subscribed');
    await c.publishAsync('interop/out', 'to mosquitto_sub');
    assert.equal(await withTimeout(exited, 'mosquitto_sub exit'), 0);
    assert.equal(out.trim(), 'to mosquitto_sub');
    await stop();
    await c.endAsync();
  });

  test('counters and client count', async () => {
    const before = t.broker.stats();
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'counted' });
    const box = inbox(c);
    await c.subscribeAsync('count/me');
    await c.publishAsync('count/me', '1', { qos: 1 });
    await box.wait('count/me');
    const s = t.broker.stats();
    assert.ok(s.messagesIn >= before.messagesIn + 1);
    assert.ok(s.messagesOut >= before.messagesOut + 1);
    assert.equal(s.clients, t.broker.clientCount());
    assert.ok(s.clients >= 1);
    await c.endAsync();
  });
});

describe('unix socket lifecycle and last will', () => {
  test('a stale socket file is replaced; a live one is refused; close removes it', async () => {
    const t = await startBroker({ ws: false });
    const sock = t.broker.addresses.unix!;
    // A second broker on the same data folder must not steal the live socket.
    await assert.rejects(startBroker({ unixPath: sock, ws: false }), /in use by another process/);
    await t.broker.close();
    assert.equal(existsSync(sock), false, 'removed on close');

    // Leave a stale socket file behind: a process that listened and was killed -9.
    const stale = path.join(t.dir, 'stale.sock');
    const child = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`,
    ]);
    await withTimeout(
      new Promise((resolve) => child.stdout.once('data', resolve)),
      'child listening',
    );
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
    assert.equal(existsSync(stale), true);
    const t2 = await startBroker({ unixPath: stale, ws: false });
    const c = await connectClient('mqtt://localhost', {
      clientId: 'u',
      unixSocket: true,
      path: stale,
    } as never);
    await c.endAsync();
    await t2.close();
    await t.close();
  });

  test('close() publishes the last will (retained) to connected subscribers before disconnecting them', async () => {
    const t = await startBroker({ ws: false });
    await t.broker.publish(`${ROOT}/status`, '{"online":true}', { retain: true });
    t.broker.setLastWill({ topic: `${ROOT}/status`, payload: '{"hostId":"test","online":false}' });
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'dashboard' });
    const box = inbox(c);
    await c.subscribeAsync(`${ROOT}/status`);
    assert.equal(await box.wait(`${ROOT}/status`), '{"online":true}');
    const closed = closedOf(c);
    await t.close();
    await closed;
    const last = box.got.at(-1);
    assert.equal(last?.payload, '{"hostId":"test","online":false}');
  });

  test('close() also ends connections that never sent CONNECT', async () => {
    const t = await startBroker({ ws: false, connectTimeoutMs: 60_000 });
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel('vm-silent', host);
    const raw = await RawClient.connect(t.tcpPort());
    await withTimeout(t.close(), 'close with silent connections', 5000);
    await withTimeout(handle.closed, 'silent agent channel closed', 5000);
    await withTimeout(raw.closed, 'silent TCP connection closed', 5000);
    guest.destroy();
  });
});
