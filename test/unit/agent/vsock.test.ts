/**
 * The guest side of the vsock channel: the µOS's helper (initramfs/src/
 * vsock-connect.c, built here exactly as the image builder builds it) and the
 * agent's end of it (guest-agent/platform/vsock.ts). This machine has no
 * AF_VSOCK loopback (vsock_loopback is not there to load, and a connect to
 * CID 1 times out), and CID 2 would be this machine's own host: the helper
 * relays to a unix socket instead (`unix:PATH`), the same code past connect().
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { Aedes } from 'aedes';
import { createAgent } from '../../../guest-agent/agent.js';
import { createLinuxPlatform } from '../../../guest-agent/platform/linux.js';
import { UnsupportedChannelError } from '../../../guest-agent/platform/types.js';
import { openRelay } from '../../../guest-agent/platform/vsock.js';
import type { Settings } from '../../../guest-agent/settings.js';
import { buildVsockHelper } from '../../../images/helpers.js';

let dir: string;
let helper: string;
before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'agent-vsock-'));
  helper = path.join(dir, 'vsock-connect');
  await buildVsockHelper(helper);
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** A unix server standing in for the host's end; resolves its first connection. */
async function host(
  name: string,
): Promise<{ sock: string; conn: Promise<net.Socket>; close(): void }> {
  const sock = path.join(dir, name);
  let take!: (s: net.Socket) => void;
  const conn = new Promise<net.Socket>((r) => (take = r));
  const all: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    all.push(s);
    take(s);
  });
  server.listen(sock);
  await once(server, 'listening');
  return {
    sock,
    conn,
    close() {
      for (const s of all) s.destroy();
      server.close();
    },
  };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function readAll(s: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (b: Buffer) => parts.push(b));
  return once(s, 'end').then(() => Buffer.concat(parts));
}

test('bytes go both ways unchanged, 8 MiB each, at once', async () => {
  const h = await host('both.sock');
  const ch = await openRelay(helper, [`unix:${h.sock}`]);
  const s = await h.conn;
  const up = randomBytes(8 << 20);
  const down = randomBytes(8 << 20);
  const gotUp = readAll(s);
  const gotDown = readAll(ch);
  ch.end(up);
  s.end(down);
  assert.equal(sha(await gotUp), sha(up));
  assert.equal(sha(await gotDown), sha(down));
  h.close();
});

test('a half-close is passed on: the host still answers after the agent has ended its side', async () => {
  const h = await host('half.sock');
  const ch = await openRelay(helper, [`unix:${h.sock}`]);
  const s = await h.conn;
  const ended = once(s, 'end');
  s.on('data', () => undefined);
  ch.end('bye');
  await ended;
  const got = readAll(ch);
  s.end('still here');
  assert.equal((await got).toString(), 'still here');
  h.close();
});

test('the host dropping the connection ends the channel; the agent dropping it ends the host side', async () => {
  const h = await host('drop.sock');
  const ch = await openRelay(helper, [`unix:${h.sock}`]);
  (await h.conn).destroy();
  ch.resume();
  await once(ch, 'close');

  const h2 = await host('drop2.sock');
  const ch2 = await openRelay(helper, [`unix:${h2.sock}`]);
  const s2 = await h2.conn;
  s2.resume();
  const ended = once(s2, 'end'); // the host side is half-open here (allowHalfOpen): 'end', not 'close'
  ch2.destroy();
  await ended;
  h.close();
  h2.close();
});

test('nobody listening: the dial fails with the helper`s own words', async () => {
  await assert.rejects(
    openRelay(helper, [`unix:${path.join(dir, 'nobody.sock')}`]),
    /connect: No such file/,
  );
  await assert.rejects(openRelay(path.join(dir, 'missing-helper'), ['2', '1024']), /cannot run/);
  await assert.rejects(openRelay(helper, ['2']), /usage: vsock-connect/);
});

test('the Linux platform dials CID 2 port 1024 through the helper; without the helper vsock is a typed "unsupported channel" error', async () => {
  const h = await host('platform.sock');
  // A stand-in helper that records its argv, then relays to the unix socket.
  const argvFile = path.join(dir, 'argv');
  const shim = path.join(dir, 'shim');
  writeFileSync(shim, `#!/bin/sh\necho "$@" > ${argvFile}\nexec ${helper} unix:${h.sock}\n`);
  chmodSync(shim, 0o755);
  const ch = await createLinuxPlatform({ vsockHelper: shim }).openChannel({
    kind: 'vsock',
    cid: 2,
    port: 1024,
  });
  assert.equal(readFileSync(argvFile, 'utf8'), '2 1024\n');
  const s = await h.conn;
  ch.write('ping');
  const [b] = (await once(s, 'data')) as [Buffer];
  assert.equal(b.toString(), 'ping');
  ch.destroy();
  h.close();

  await assert.rejects(
    createLinuxPlatform({ vsockHelper: path.join(dir, 'none') }).openChannel({
      kind: 'vsock',
      cid: 2,
      port: 1024,
    }),
    (err) => err instanceof UnsupportedChannelError && err.channel === 'vsock',
  );
});

test('the agent core over the helper says hello and ready to a broker, and redials through a new helper', async () => {
  const broker = await Aedes.createBroker();
  const sock = path.join(dir, 'broker.sock');
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => {
    conns.push(s);
    broker.handle(s);
  });
  server.listen(sock);
  await once(server, 'listening');
  let readies = 0;
  let onReady: () => void = () => undefined;
  broker.subscribe(
    'mvirt/h/agent/vm-vs/up/ready',
    (_p, cb) => {
      readies++;
      onReady();
      cb();
    },
    () => undefined,
  );
  const ready = () => new Promise<void>((r) => (onReady = r));
  const settings: Settings = {
    vmId: 'vm-vs',
    root: 'mvirt/h',
    channel: { kind: 'vsock', cid: 2, port: 1024 },
    telemetryMs: 3_600_000,
    tokenPath: path.join(dir, 'no-token'),
    initUptimePath: path.join(dir, 'init-uptime'),
  };
  const platform = {
    ...createLinuxPlatform(),
    openChannel: () => openRelay(helper, [`unix:${sock}`]),
    prepare: () => undefined, // no long-lived helper sh left behind by this test
  };
  const agent = createAgent(platform, settings, {
    console: () => undefined,
    connection: {
      keepaliveS: 30,
      connectTimeoutMs: 5000,
      backoff: { initialMs: 10, maxMs: 50, factor: 2, jitter: 0 },
    },
  });
  try {
    const first = ready();
    await agent.start();
    await first;
    // The host drops the channel (a daemon restart): the agent dials again.
    const again = ready();
    conns[0]?.destroy();
    await again;
    assert.equal(readies, 2);
    assert.equal(conns.length, 2);
  } finally {
    await agent.stop();
    server.close();
    await new Promise<void>((r) => broker.close(() => r()));
  }
});
