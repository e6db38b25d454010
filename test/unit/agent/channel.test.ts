import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Aedes } from 'aedes';
import { createAgent } from '../../../guest-agent/agent.js';
import { createLinuxPlatform } from '../../../guest-agent/platform/linux.js';
import { findVirtioPort, openPollableDevice } from '../../../guest-agent/platform/virtio.js';
import type { Settings } from '../../../guest-agent/settings.js';

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'agent-channel-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('findVirtioPort picks the port by its sysfs name', () => {
  const sys = path.join(dir, 'virtio-ports');
  for (const [port, name] of [
    ['vport0p0', 'org.qemu.guest_agent.0'],
    ['vport0p1', 'mvirt.agent'],
  ]) {
    mkdirSync(path.join(sys, port as string), { recursive: true });
    writeFileSync(path.join(sys, port as string, 'name'), `${name}\n`);
  }
  mkdirSync(path.join(sys, 'vport0p2'));
  assert.equal(findVirtioPort('mvirt.agent', sys), '/dev/vport0p1');
  assert.equal(findVirtioPort('other', sys), null);
  assert.equal(findVirtioPort('mvirt.agent', path.join(dir, 'missing')), null);
});

test('openPollableDevice gives a working Duplex over a pollable fd (a FIFO stands in for the port)', async () => {
  const fifo = path.join(dir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const s = openPollableDevice(fifo);
  s.write(Buffer.from([1, 2, 3, 0xff]));
  const [data] = (await once(s, 'data')) as [Buffer];
  assert.deepEqual([...data], [1, 2, 3, 0xff]);
  s.destroy();
  await once(s, 'close');
});

test(
  'openPollableDevice hands the port one buffer per batch of writes (one transfer per MQTT packet)',
  { timeout: 10_000 },
  async () => {
    const fifo = path.join(dir, 'fifo-batch');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const s = openPollableDevice(fifo);
    const handed: number[] = [];
    const write = s._write.bind(s);
    s._write = (chunk: Buffer, encoding, cb) => {
      handed.push(chunk.length);
      write(chunk, encoding, cb);
    };
    // As mqtt-packet writes a PUBLISH: corked, in pieces, one of them a string.
    s.cork();
    s.write(Buffer.from([0x32, 9]));
    s.write('\u0000\u0001t');
    s.write(Buffer.from([0, 7]));
    s.write(Buffer.from('abc'));
    process.nextTick(() => s.uncork());
    let got = Buffer.alloc(0);
    while (got.length < 10) got = Buffer.concat([got, ((await once(s, 'data')) as [Buffer])[0]]);
    assert.deepEqual([...got], [0x32, 9, 0, 1, 0x74, 0, 7, 0x61, 0x62, 0x63]);
    assert.deepEqual(handed, [10], 'one buffer, not one per piece');
    s.destroy();
    await once(s, 'close');
  },
);

test('tcp: the real Linux platform dials the broker with username = vmId and the token file as password', async () => {
  const broker = await Aedes.createBroker();
  const seen: Array<{ user: string | undefined; pass: string | undefined }> = [];
  let twice: () => void = () => undefined;
  const refusedTwice = new Promise<void>((r) => (twice = r));
  broker.authenticate = (_client, user, pass, cb) => {
    seen.push({ user, pass: pass?.toString() });
    if (seen.length === 2) twice();
    cb(null, user === 'vm-tcp' && pass?.toString() === 's3cret');
  };
  const server = net.createServer((sock) => broker.handle(sock));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const tokenPath = path.join(dir, 'token');
  writeFileSync(tokenPath, 'wrong\n');

  const ready = new Promise<void>((resolve) =>
    broker.subscribe(
      'mvirt/h/agent/vm-tcp/up/ready',
      (_p, cb) => {
        cb();
        resolve();
      },
      () => undefined,
    ),
  );
  const settings: Settings = {
    vmId: 'vm-tcp',
    root: 'mvirt/h',
    channel: { kind: 'tcp', host: '127.0.0.1', port },
    telemetryMs: 3_600_000,
    tokenPath,
    initUptimePath: path.join(dir, 'init-uptime'),
  };
  const agent = createAgent(createLinuxPlatform(), settings, {
    console: () => undefined,
    connection: {
      keepaliveS: 30,
      connectTimeoutMs: 5000,
      backoff: { initialMs: 10, maxMs: 50, factor: 2, jitter: 0 },
    },
  });
  try {
    await agent.start();
    // Refused with the wrong token; it keeps trying and reads the file again.
    await refusedTwice;
    assert.deepEqual(seen[0], { user: 'vm-tcp', pass: 'wrong' });
    writeFileSync(tokenPath, 's3cret\n');
    await ready;
    assert.deepEqual(seen.at(-1), { user: 'vm-tcp', pass: 's3cret' });
  } finally {
    await agent.stop();
    server.close();
    await new Promise<void>((r) => broker.close(() => r()));
  }
});
