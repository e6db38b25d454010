/**
 * MQTT 3.1.1 cases where the server must close the connection (or must not
 * refuse), each sent byte for byte to Debian's Mosquitto and to mvirtd's
 * broker: mvirtd must answer as Mosquitto does.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  startBroker,
  TEST_ADMIN,
  withTimeout,
  type TestBroker,
} from '../support/broker-fixtures.js';
import { encodeConnect, encodeLength, RawClient } from '../../harness/broker-raw.js';

const children: ChildProcess[] = [];
let dir: string;
let mosquittoPort: number;
let b: TestBroker;

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

async function startMosquitto(): Promise<number> {
  const port = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  await writeFile(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let err = '';
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        if (/listen socket on port/.test(err)) resolve();
      });
      child.on('exit', (code) => reject(new Error(`mosquitto exited ${code}: ${err}`)));
    }),
    'mosquitto listening',
  );
  return port;
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-conformance-'));
  mosquittoPort = await startMosquitto();
  b = await startBroker();
});
after(async () => {
  for (const c of children) c.kill();
  await b?.close();
  await rm(dir, { recursive: true, force: true });
});

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const str = (s: string | Buffer): Buffer => {
  const v = typeof s === 'string' ? Buffer.from(s) : s;
  return Buffer.concat([u16(v.length), v]);
};
const packet = (first: number, body: Buffer): Buffer =>
  Buffer.concat([Buffer.from([first]), encodeLength(body.length), body]);
/** A CONNECT with hand-set flags (what encodeConnect will not produce). */
const connectRaw = (flags: number, payload: Buffer[]): Buffer =>
  packet(0x10, Buffer.concat([str('MQTT'), Buffer.from([4, flags]), u16(30), ...payload]));
const BAD_UTF8 = Buffer.from([0x61, 0xc0, 0x80, 0x62]); // overlong NUL: ill-formed UTF-8

/** What a server did with `bytes`: the CONNACK code (or none) and whether it closed. */
interface Outcome {
  connack: number | null;
  closed: boolean;
}

/**
 * Send bytes (after an accepted CONNECT when `after` is set) and watch for
 * up to 3 s; closed = the server closed the connection in that time.
 */
async function probe(port: number, bytes: Buffer, afterConnect = false): Promise<Outcome> {
  const c = await RawClient.connect(port);
  try {
    let connack: number | null = null;
    if (afterConnect) {
      connack = await c.handshake({ clientId: `probe-${Math.random().toString(36).slice(2)}` });
      assert.equal(connack, 0);
    }
    c.send(bytes);
    const deadline = new Promise<'open'>((r) => setTimeout(() => r('open'), 3000).unref());
    for (;;) {
      const p = await Promise.race([c.next(), deadline]);
      if (p === 'open') return { connack, closed: false };
      if (p === null) return { connack, closed: true };
      if (p.type === 2) connack = p.body[1]!;
    }
  } finally {
    c.destroy();
  }
}

const cases: Array<{ name: string; bytes: () => Buffer; afterConnect?: boolean; want: Outcome }> = [
  {
    name: 'empty client id with clean session off: CONNACK 2, closed [MQTT-3.1.3-8]',
    bytes: () => encodeConnect({ clientId: '', clean: false }),
    want: { connack: 2, closed: true },
  },
  {
    name: 'password flag without user name flag: closed [MQTT-3.1.2-22]',
    bytes: () => connectRaw(0x02 | 0x40, [str('pw-1'), str('secret')]),
    want: { connack: null, closed: true },
  },
  {
    name: 'will QoS 3: closed [MQTT-3.1.2-14]',
    bytes: () => connectRaw(0x02 | 0x04 | (3 << 3), [str('will-1'), str('w/t'), str('x')]),
    want: { connack: null, closed: true },
  },
  {
    name: 'ill-formed UTF-8 in a PUBLISH topic: closed [MQTT-1.5.3-1]',
    bytes: () => packet(0x30, Buffer.concat([str(BAD_UTF8), Buffer.from('x')])),
    afterConnect: true,
    want: { connack: 0, closed: true },
  },
  {
    name: 'ill-formed UTF-8 in a SUBSCRIBE filter: closed [MQTT-1.5.3-1]',
    bytes: () => packet(0x82, Buffer.concat([u16(1), str(BAD_UTF8), Buffer.from([0])])),
    afterConnect: true,
    want: { connack: 0, closed: true },
  },
  {
    name: 'ill-formed UTF-8 in a client id: closed or refused [MQTT-1.5.3-1]',
    bytes: () => connectRaw(0x02, [str(BAD_UTF8)]),
    want: { connack: null, closed: true },
  },
  {
    name: 'UNSUBSCRIBE without a topic filter: closed [MQTT-3.10.3-2]',
    bytes: () => packet(0xa2, u16(7)),
    afterConnect: true,
    want: { connack: 0, closed: true },
  },
  {
    name: 'a client id with spaces is accepted',
    // With a login: mvirtd's TCP listener takes no anonymous controller.
    bytes: () =>
      encodeConnect({
        clientId: 'my laptop 1',
        username: TEST_ADMIN.username,
        password: TEST_ADMIN.password,
      }),
    want: { connack: 0, closed: false },
  },
];

describe('MQTT 3.1.1 conformance, as Debian mosquitto', () => {
  for (const c of cases) {
    test(c.name, async () => {
      const mosq = await probe(mosquittoPort, c.bytes(), c.afterConnect);
      assert.deepEqual(mosq, c.want, 'mosquitto (the reference) behaves as the case says');
      const ours = await probe(b.tcpPort(), c.bytes(), c.afterConnect);
      assert.deepEqual(ours, mosq, 'mvirtd answers as mosquitto does');
    });
  }

  test('a client id that would alias a topic level is refused (CONNACK 2)', async () => {
    for (const id of ['a/b', 'x+', '#', '..']) {
      const ours = await probe(b.tcpPort(), encodeConnect({ clientId: id }));
      assert.deepEqual(ours, { connack: 2, closed: true }, id);
    }
  });
});
