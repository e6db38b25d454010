/**
 * The agent's side of port forwarding through its real MQTT session (the
 * agent harness: a real aedes broker, the in-memory platform): a stream the
 * host opens reaches a TCP service on 127.0.0.1 and carries bytes both ways;
 * without a way to connect, or to a port nothing listens on, the open is
 * refused with a typed error; a bad port message is answered, not fatal.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Server } from 'node:net';
import { after, before, test } from 'node:test';
import type { PortUp } from '../../../protocol/ports.js';
import { nextId, startHarness, type Harness } from '../../support/agent-harness.js';

let h: Harness;
let echo: Server;
let echoPort: number;
before(async () => {
  h = await startHarness();
  echo = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
});
after(async () => {
  await h.close();
  echo.close();
});

test('without a way to connect, an open is refused with PORT_REFUSED', async () => {
  const r = await h.request('port', {
    op: 'open',
    id: nextId(),
    stream: 1,
    port: 80,
    window: 4096,
  });
  assert.equal(r.ok, false);
  assert.equal(r.error?.code, 'PORT_REFUSED');
});

test('a stream carries bytes to a guest service and back, then ends both ways', async () => {
  h.platform.connectLoopback = (port) =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
  const open = await h.request('port', {
    op: 'open',
    id: nextId(),
    stream: 2,
    port: echoPort,
    window: 4096,
  });
  assert.equal(open.ok, true, JSON.stringify(open.error));
  await h.send('port', { op: 'data', stream: 2, seq: 0, data: Buffer.from('hello ') });
  await h.send('port', { op: 'data', stream: 2, seq: 1, data: Buffer.from('guest') });
  await h.send('port', { op: 'end', stream: 2, seq: 2 });
  const end = await h.waitFor('port', (m) => m.op === 'end' && m.stream === 2);
  const data = h
    .all('port')
    .filter((m): m is Extract<PortUp, { op: 'data' }> => m.op === 'data' && m.stream === 2);
  assert.equal(Buffer.concat(data.map((d) => d.data)).toString(), 'hello guest');
  assert.equal((end as Extract<PortUp, { op: 'end' }>).seq, data.length);
});

test('nothing listening: PORT_REFUSED naming the port', async () => {
  const closed = createServer();
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const port = (closed.address() as { port: number }).port;
  closed.close();
  await once(closed, 'close');
  const r = await h.request('port', { op: 'open', id: nextId(), stream: 3, port, window: 4096 });
  assert.equal(r.ok, false);
  assert.equal(r.error?.code, 'PORT_REFUSED');
  assert.match(r.error!.message, new RegExp(`127\\.0\\.0\\.1:${port} in the guest: ECONNREFUSED`));
});

test('a port message that does not validate is answered, and the agent goes on', async () => {
  const id = nextId();
  const r = await h.request('port', { op: 'open', id, stream: 4, port: 0, window: 4096 });
  assert.equal(r.ok, false);
  assert.equal(r.error?.code, 'BAD_MESSAGE');
  const ping = await h.request('ping', { id: nextId() });
  assert.equal(ping.ok, true);
});
