/**
 * Port-forward streams end to end without a VM: mvirtd's end
 * (host/ports/streams.ts) and the agent's (guest-agent/ports.ts) joined by a
 * channel that encodes, decodes and validates each message as the real one
 * does (CBOR, protocol/agent.ts) and delivers it a turn later; real TCP on
 * both sides (clients on the host, a service on the "guest's" loopback).
 * Then mvirtd against a hostile guest that sends what it likes.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, test } from 'node:test';
import { AGENT_DOWN, AGENT_UP } from '../../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../../protocol/codec.js';
import type { PortDown, PortUp } from '../../../protocol/ports.js';
import { createPorts } from '../../../guest-agent/ports.js';
import type { AgentListener } from '../../../host/agent/sessions.js';
import { createPortStreams, type StreamEnd } from '../../../host/ports/streams.js';
import { testLogger } from '../../../harness/daemon.js';

const log = testLogger();
const VM = 'vm-1';
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

/** A TCP service on 127.0.0.1 (the guest's service): returns its port. */
async function service(onConn: (s: Socket) => void): Promise<number> {
  const srv = createServer({ allowHalfOpen: true }, onConn);
  servers.push(srv);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return (srv.address() as { port: number }).port;
}

/** A listener whose connections the test hands to the streams (as forwards.ts does). */
async function entry(onConn: (s: Socket) => void): Promise<number> {
  const srv = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConn);
  servers.push(srv);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return (srv.address() as { port: number }).port;
}

const wire = <T>(schema: { parse(v: unknown): T }, m: unknown): T =>
  schema.parse(decodeCbor(encodeCbor(m)));

/** Host streams and a guest agent's ports, joined by an in-memory channel. */
function joined(options: { window?: number; maxStreams?: number } = {}) {
  const listeners: AgentListener[] = [];
  const refused: string[] = [];
  const up: PortUp[] = [];
  /** The agent's sockets to the guest service. */
  const agentSockets: Socket[] = [];
  const guest = createPorts(
    {
      connectLoopback: (port) =>
        new Promise((resolve, reject) => {
          const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
          agentSockets.push(s);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        }),
    },
    {
      send: (m) => {
        up.push(m);
        const v = wire(AGENT_UP.port, m);
        setImmediate(() => listeners.forEach((l) => l.port?.(VM, v)));
      },
      log: () => undefined,
    },
  );
  const streams = createPortStreams({
    agents: {
      listen: (l) => (listeners.push(l), () => undefined),
      call: async (_vm, _kind, body) =>
        guest.handle(wire(AGENT_DOWN.port, { ...body, id: 'r1' }) as PortDown),
    },
    send: async (_vm, m) => {
      const v = wire(AGENT_DOWN.port, m) as PortDown;
      setImmediate(() => void guest.handle(v));
    },
    log,
    refused: (_vm, what) => refused.push(what),
    options: { ...options, openTimeoutMs: 5000 },
  });
  return { guest, streams, refused, up, listeners, agentSockets };
}

/** Forward connections of a host listener to guestPort; each stream's end is recorded. */
async function forward(j: ReturnType<typeof joined>, guestPort: number) {
  const ends: StreamEnd[] = [];
  const accepted: Socket[] = [];
  const port = await entry((sock) => {
    accepted.push(sock);
    j.streams.open(VM, guestPort, sock, (e) => ends.push(e));
  });
  return { port, ends, accepted };
}

/** Send `data`, half-close, read everything back. */
function roundTrip(port: number, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const got: Buffer[] = [];
    s.on('data', (b: Buffer) => got.push(b));
    s.on('end', () => {
      s.end();
      resolve(Buffer.concat(got));
    });
    s.on('error', reject);
    s.end(data);
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('50 streams at once carry their bytes both ways, each its own', async () => {
  // The service answers each connection with the sha256 of what it got, then the bytes reversed.
  const guestPort = await service((s) => {
    const got: Buffer[] = [];
    s.on('data', (b: Buffer) => got.push(b));
    s.on('end', () => {
      const all = Buffer.concat(got);
      s.end(Buffer.concat([Buffer.from(sha(all)), Buffer.from(all).reverse()]));
    });
  });
  const j = joined({ window: 64 * 1024 });
  const f = await forward(j, guestPort);
  const inputs = Array.from({ length: 50 }, (_, i) => randomBytes(1000 + i * 7919));
  const outs = await Promise.all(inputs.map((d) => roundTrip(f.port, d)));
  for (const [i, out] of outs.entries()) {
    assert.equal(out.subarray(0, 64).toString(), sha(inputs[i]!));
    assert.deepEqual(out.subarray(64), Buffer.from(inputs[i]!).reverse());
  }
  await until(() => f.ends.length === 50);
  assert.ok(
    f.ends.every((e) => e.error === undefined),
    JSON.stringify(f.ends.find((e) => e.error)),
  );
  assert.equal(j.streams.count(VM), 0);
  assert.equal(j.guest.open, 0);
  assert.deepEqual(j.refused, []);
});

test('a guest service that stops reading holds back its own stream only', async () => {
  let stuck: Socket | undefined;
  const guestPort = await service((s) => {
    // The first connection is never read; the others echo.
    if (!stuck) {
      stuck = s;
      s.pause();
      return;
    }
    s.pipe(s);
  });
  const j = joined({ window: 64 * 1024 });
  const f = await forward(j, guestPort);
  const slow = connect({ host: '127.0.0.1', port: f.port });
  await once(slow, 'connect');
  await until(() => stuck !== undefined && f.accepted.length === 1);
  // Far more than every buffer on the way can take.
  let drained = false;
  slow.write(randomBytes(64 * 1024 * 1024), () => (drained = true));
  // mvirtd stops reading the client once the guest gives no more credit …
  await until(() => f.accepted[0]!.isPaused());
  // … while other streams go on.
  for (let i = 0; i < 5; i++) {
    const d = randomBytes(200_000);
    assert.ok((await roundTrip(f.port, d)).equals(d));
  }
  assert.equal(drained, false, 'the stuck stream is held back');
  assert.ok(f.accepted[0]!.isPaused(), 'and mvirtd still does not read it');
  assert.equal(j.streams.count(VM), 1, 'only the stuck stream is open');
  // A paused socket does not see its client leave (nothing reads it); the
  // guest service leaving ends the stream.
  slow.destroy();
  stuck!.destroy();
  await until(() => j.streams.count(VM) === 0 && j.guest.open === 0);
});

test('a host client that stops reading holds back the guest, not mvirtd', async () => {
  const window = 64 * 1024;
  const total = 64 * 1024 * 1024;
  let written = 0;
  let guestSide: Socket | undefined;
  const guestPort = await service((s) => {
    guestSide = s;
    const chunk = randomBytes(256 * 1024);
    const pump = () => {
      while (written < total) {
        written += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      s.end();
    };
    pump();
  });
  const j = joined({ window });
  let hostSock: Socket | undefined;
  const ends: StreamEnd[] = [];
  const port = await entry((sock) => {
    hostSock = sock;
    j.streams.open(VM, guestPort, sock, (e) => ends.push(e));
  });
  const client = connect({ host: '127.0.0.1', port });
  client.pause(); // never reads
  await until(() => guestSide !== undefined && hostSock !== undefined);
  // The agent stops reading the guest service once mvirtd gives no more credit.
  await until(() => j.agentSockets[0]?.isPaused() === true && hostSock!.writableLength > 0);
  assert.ok(written < total, `the guest service was held back (${written} of ${total})`);
  // mvirtd holds at most the window (written into the client socket, not yet taken).
  assert.ok(
    hostSock!.writableLength <= window,
    `mvirtd's socket buffer ${hostSock!.writableLength} > window ${window}`,
  );
  // Reading again lets everything through.
  let got = 0;
  client.on('data', (b: Buffer) => (got += b.length));
  client.resume();
  await once(client, 'end');
  assert.equal(got, total);
  client.end();
  await until(() => ends.length === 1);
  assert.equal(ends[0]!.error, undefined);
  assert.equal(ends[0]!.bytesFromGuest, total);
});

test('the guest refuses a port nothing listens on, and opens no more than its limit', async () => {
  const free = await service(() => undefined);
  servers.at(-1)!.close();
  await once(servers.at(-1)!, 'close');
  const j = joined();
  const f = await forward(j, free);
  const s = connect({ host: '127.0.0.1', port: f.port });
  await once(s, 'close');
  await until(() => f.ends.length === 1);
  assert.match(f.ends[0]!.error!, /127\.0\.0\.1:\d+ in the guest: ECONNREFUSED/);

  const open = await service(() => undefined);
  const k = joined({ maxStreams: 2 });
  const g = await forward(k, open);
  const socks = [0, 1, 2].map(() => connect({ host: '127.0.0.1', port: g.port }));
  await until(() => g.ends.length === 1);
  assert.match(g.ends[0]!.error!, /2 streams are open to this VM/);
  // A reset (not a FIN, which would only half-close the streams) ends them.
  for (const x of socks) x.resetAndDestroy();
  await until(() => k.streams.count(VM) === 0 && k.guest.open === 0);
});

/** mvirtd against a guest that sends what it likes: `say` delivers a PortUp as the link would. */
function hostile() {
  const listeners: AgentListener[] = [];
  const refused: string[] = [];
  const down: PortDown[] = [];
  const streams = createPortStreams({
    agents: {
      listen: (l) => (listeners.push(l), () => undefined),
      call: async (_vm, _kind, body) => (down.push(body as unknown as PortDown), {}),
    },
    send: async (_vm, m) => void down.push(m),
    log,
    refused: (_vm, what) => refused.push(what),
    options: { window: 1000 },
  });
  const say = (m: PortUp) => listeners.forEach((l) => l.port?.(VM, m));
  return { streams, refused, down, say };
}

test('a hostile guest: streams never given, data beyond its credit, garbage on the channel', async () => {
  const h = hostile();
  // Nothing opened yet: anything the guest sends is for a stream it was never given.
  h.say({ op: 'data', stream: 1, seq: 0, data: new Uint8Array([1]) });
  h.say({ op: 'credit', stream: 77, bytes: 10 });
  assert.deepEqual(h.refused, [
    'port messages for streams never opened refused',
    'port messages for streams never opened refused',
  ]);

  const ends: StreamEnd[] = [];
  const accepted: Socket[] = [];
  const port = await entry((sock) => {
    accepted.push(sock);
    h.streams.open(VM, 80, sock, (e) => ends.push(e));
  });
  connect({ host: '127.0.0.1', port });
  connect({ host: '127.0.0.1', port });
  await until(() => h.streams.count(VM) === 2);
  // Streams are opened in the order connections are accepted.
  const [a, b] = accepted as [Socket, Socket];
  const [sa, sb] = h.down.filter((m) => m.op === 'open').map((m) => m.stream);
  // A stream id above any given is refused, not taken for one.
  h.say({ op: 'data', stream: Math.max(sa!, sb!) + 1, seq: 0, data: new Uint8Array([1]) });
  assert.equal(h.refused.length, 3);
  // More than the window on stream a: a alone is aborted, and the guest told.
  h.say({ op: 'data', stream: sa!, seq: 0, data: new Uint8Array(600) });
  h.say({ op: 'data', stream: sa!, seq: 1, data: new Uint8Array(600) });
  assert.equal(h.refused.at(-1), 'port messages breaking flow control refused');
  assert.ok(a.destroyed, "mvirtd dropped a's connection");
  assert.deepEqual(h.down.at(-1), { op: 'close', stream: sa, code: 'protocol' });
  assert.equal(h.streams.count(VM), 1, 'b is still open');
  // Credit beyond what b could have used is a violation too.
  h.say({ op: 'credit', stream: sb!, bytes: 5000 });
  assert.ok(b.destroyed);
  assert.equal(ends.length, 2);
  assert.match(ends[0]!.error!, /broke flow control/);
  // Late messages of a closed stream are dropped quietly.
  const before = h.refused.length;
  h.say({ op: 'end', stream: sa!, seq: 1 });
  assert.equal(h.refused.length, before);
  // Garbage never reaches the streams: the link refuses what does not validate.
  for (const junk of [
    { op: 'open', stream: 1, port: 80, window: 100, id: 'x' },
    { op: 'data', stream: 1, seq: 0, data: 'text' },
    { op: 'data', stream: 1, seq: 0, data: new Uint8Array(0) },
    { op: 'credit', stream: -1, bytes: 1 },
    { op: 'close', stream: 1, code: 'whatever' },
    { op: 'data', stream: 1, seq: 0, data: new Uint8Array(1), extra: 1 },
  ])
    assert.equal(AGENT_UP.port.safeParse(junk).success, false, JSON.stringify(junk));
});

test('the agent channel going away ends every stream of the VM', async () => {
  const h = hostile();
  const ends: StreamEnd[] = [];
  const port = await entry((sock) => h.streams.open(VM, 80, sock, (e) => ends.push(e)));
  const socks = [0, 1, 2].map(() => connect({ host: '127.0.0.1', port }));
  const closed = Promise.all(socks.map((s) => once(s, 'close')));
  await until(() => h.streams.count(VM) === 3);
  // What sessions.ts emits when the channel closes.
  (h as unknown as { streams: { closeVm(v: string, w: string): void } }).streams.closeVm(
    VM,
    'the agent channel closed',
  );
  await closed;
  assert.equal(ends.length, 3);
  assert.ok(ends.every((e) => e.error === 'the agent channel closed'));
});

/** Resolve once `cond` holds (checked after each turn of the event loop). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}
