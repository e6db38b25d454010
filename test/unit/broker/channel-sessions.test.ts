/**
 * channel-sessions.ts on its own: a unix socket pair stands in for QEMU's
 * chardev socket, and `admit` records what each session reads instead of
 * handing it to aedes (test/integration/broker-agent.test.ts does that).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { findConnect, splitChannelSessions } from '../../../host/broker/channel-sessions.js';
import { encodeConnect, encodePublish } from '../../../harness/broker-raw.js';
import { socketPair } from '../../support/broker-fixtures.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-chs-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const CONNECT_A = encodeConnect({ clientId: 'a' });
const CONNECT_B = encodeConnect({ clientId: 'b', keepalive: 30 });
const PUBLISH = encodePublish('mvirt/test/agent/vm/up/output', Buffer.alloc(300, 0x10));

interface Recorded {
  data: Buffer[];
  ended: boolean;
  stream: Duplex;
}

async function channel(
  o: { restartBurst?: number; now?: () => number; connectTimeoutMs?: number } = {},
) {
  const { host, guest } = await socketPair(dir);
  const sessions: Recorded[] = [];
  const events = { skipped: [] as number[], restarted: 0, violations: [] as string[] };
  const changed: Array<() => void> = [];
  const settle = () => changed.splice(0).forEach((f) => f());
  const handle = splitChannelSessions(
    host,
    (stream) => {
      const r: Recorded = { data: [], ended: false, stream };
      stream.on('data', (d: Buffer) => {
        r.data.push(d);
        settle();
      });
      stream.on('end', () => {
        r.ended = true;
        settle();
      });
      stream.on('error', () => undefined);
      sessions.push(r);
      settle();
      return stream;
    },
    { maxConnectSize: 64 * 1024, connectTimeoutMs: 10_000, ...o },
    {
      skipped: (n) => events.skipped.push(n),
      restarted: () => events.restarted++,
      violation: (r) => events.violations.push(r),
    },
  );
  let restarts = 0;
  handle.onRestart?.(() => restarts++);
  /** Resolves once cond holds (checked after every event the channel produces). */
  const until = (cond: () => boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not reached: ${cond.toString()}`)), 10_000);
      const check = () => {
        if (!cond()) return void changed.push(check);
        clearTimeout(timer);
        resolve();
      };
      check();
    });
  const bytes = (i: number) => Buffer.concat(sessions[i]?.data ?? []);
  return {
    guest: guest as net.Socket,
    host,
    handle,
    sessions,
    events,
    until,
    bytes,
    restarts: () => restarts,
  };
}

test('findConnect: a CONNECT after garbage, across any split, and not a lookalike', () => {
  const garbage = Buffer.from([0x10, 0x05, 1, 2, 3, 0x10, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x30]);
  const buf = Buffer.concat([garbage, CONNECT_A]);
  assert.deepEqual(findConnect(buf, 65536), { at: garbage.length });
  // Too large to be a CONNECT the broker would take: skipped.
  assert.deepEqual(findConnect(CONNECT_A, 5), { keepFrom: CONNECT_A.length });
  // Cut anywhere inside the signature: kept for the next read.
  for (let cut = 1; cut < 9; cut++) {
    assert.deepEqual(findConnect(CONNECT_A.subarray(0, cut), 65536), { keepFrom: 0 }, `cut ${cut}`);
  }
  assert.deepEqual(findConnect(Buffer.from([1, 2, 3]), 65536), { keepFrom: 3 });
});

test('bytes of no session are skipped; the session starts at its CONNECT', async () => {
  const c = await channel();
  const tail = PUBLISH.subarray(100);
  c.guest.write(Buffer.concat([tail, CONNECT_A, PUBLISH]));
  await c.until(() => c.bytes(0).length === CONNECT_A.length + PUBLISH.length);
  assert.deepEqual(c.bytes(0), Buffer.concat([CONNECT_A, PUBLISH]));
  assert.equal(
    c.events.skipped.reduce((a, b) => a + b, 0),
    tail.length,
  );
  assert.equal(c.sessions.length, 1);
  c.guest.destroy();
  await c.handle.closed;
});

test('a CONNECT fed one byte at a time after garbage still starts a session', async () => {
  const c = await channel();
  const all = Buffer.concat([Buffer.from([0x10, 0x02, 0x00]), CONNECT_B]);
  for (const b of all) {
    c.guest.write(Buffer.from([b]));
    await new Promise((r) => setImmediate(r));
  }
  await c.until(() => c.bytes(0).length === CONNECT_B.length);
  assert.deepEqual(c.bytes(0), CONNECT_B);
  c.guest.destroy();
  await c.handle.closed;
});

test('a second CONNECT starts a new session; the old one ends and its writes go nowhere', async () => {
  const c = await channel();
  const got: Buffer[] = [];
  c.guest.on('data', (d: Buffer) => got.push(d));
  // The broker may still answer the old session after the split (its CONNACK
  // in flight): written at the very moment of the split, it must go nowhere.
  c.handle.onRestart?.(() => c.sessions[0]!.stream.write(Buffer.from('old')));
  c.guest.write(Buffer.concat([CONNECT_A, PUBLISH, CONNECT_B, PUBLISH]));
  await c.until(
    () => c.sessions.length === 2 && c.bytes(1).length === CONNECT_B.length + PUBLISH.length,
  );
  await c.until(() => c.sessions[0]!.ended);
  assert.deepEqual(c.bytes(0), Buffer.concat([CONNECT_A, PUBLISH]));
  assert.deepEqual(c.bytes(1), Buffer.concat([CONNECT_B, PUBLISH]));
  assert.equal(c.events.restarted, 1);
  assert.equal(c.restarts(), 1);

  c.sessions[1]!.stream.write(Buffer.from('new'));
  await new Promise<void>((resolve) => {
    const check = () =>
      Buffer.concat(got).toString().includes('new') ? resolve() : setImmediate(check);
    check();
  });
  assert.equal(Buffer.concat(got).toString(), 'new', 'only the current session reaches the guest');
  assert.equal(c.host.destroyed, false, 'the channel stays open');
  c.guest.destroy();
  await c.handle.closed;
});

test('restarts are budgeted: past the burst the channel closes', async () => {
  let t = 0;
  const c = await channel({ restartBurst: 2, now: () => t });
  c.guest.write(Buffer.concat([CONNECT_A, CONNECT_A, CONNECT_A]));
  await c.until(() => c.events.restarted === 2);
  assert.equal(c.events.violations.length, 0);
  t += 1000; // one more allowed a second later
  c.guest.write(CONNECT_A);
  await c.until(() => c.events.restarted === 3);
  c.guest.write(Buffer.concat([CONNECT_A, CONNECT_A]));
  await c.handle.closed;
  assert.deepEqual(c.events.violations, ['the agent restarts its MQTT session too often']);
});

test('the broker ending a session closes the channel; a guest end ends the session', async () => {
  const a = await channel();
  a.guest.write(CONNECT_A);
  await a.until(() => a.sessions.length === 1);
  a.sessions[0]!.stream.destroy();
  await a.handle.closed;

  const b = await channel();
  b.guest.end(Buffer.concat([CONNECT_A, PUBLISH]));
  await b.until(() => b.sessions[0]?.ended === true);
  assert.deepEqual(b.bytes(0), Buffer.concat([CONNECT_A, PUBLISH]), 'the last packets were read');
  await b.handle.closed;
});

test('hold stops reading the guest; release goes on', async () => {
  const c = await channel();
  c.guest.write(CONNECT_A);
  await c.until(() => c.bytes(0).length === CONNECT_A.length);
  c.handle.hold(true);
  assert.equal(c.host.isPaused(), true, 'the guest is not read while held');
  c.guest.write(PUBLISH);
  c.handle.hold(false);
  assert.equal(c.host.isPaused(), false);
  await c.until(() => c.bytes(0).length === CONNECT_A.length + PUBLISH.length);
  c.handle.close();
  await c.handle.closed;
});

test('a channel where no session begins is closed after the CONNECT timeout', async () => {
  const c = await channel({ connectTimeoutMs: 50 });
  c.guest.write(Buffer.from('not mqtt at all'));
  await c.handle.closed;
  assert.equal(c.sessions.length, 0);
  // One that began in time is not.
  const d = await channel({ connectTimeoutMs: 50 });
  d.guest.write(CONNECT_A);
  await d.until(() => d.sessions.length === 1);
  await new Promise((r) => setTimeout(r, 100)); // past the timeout: nothing to await when nothing happens
  assert.equal(d.host.destroyed, false);
  d.handle.close();
  await d.handle.closed;
});
