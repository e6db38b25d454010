import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import { once } from 'node:events';
import { test } from 'node:test';
import { createFrameScanner, guardStream } from '../../../host/broker/frame-guard.js';
import { encodeConnect, encodeLength, encodePublish } from '../../../harness/broker-raw.js';

const closed = (s: NodeJS.EventEmitter) => new Promise((resolve) => s.once('close', resolve));
const limits = { maxPacketSize: 1000, maxConnectSize: 100 };
/** A peer that takes every write at once and keeps what it got. */
function recordingPeer(): { inner: Duplex; written: Buffer[] } {
  const written: Buffer[] = [];
  const inner = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      written.push(chunk);
      cb();
    },
  });
  return { inner, written };
}
const connect = encodeConnect({ clientId: 'c1' });

test('accepts a CONNECT and packets up to the cap, in any chunking', () => {
  const stream = Buffer.concat([
    connect,
    encodePublish('a/b', Buffer.alloc(990)),
    encodePublish('c', 'x'),
    Buffer.from([0xc0, 0x00]), // PINGREQ
  ]);
  for (const size of [1, 2, 3, 7, 64, stream.length]) {
    const s = createFrameScanner(limits);
    for (let i = 0; i < stream.length; i += size)
      assert.equal(s.feed(stream.subarray(i, i + size)), null, `chunk size ${size}`);
    assert.equal(s.packets, 4);
  }
});

test('refuses a packet whose announced length exceeds the cap, from the header alone', () => {
  const s = createFrameScanner(limits);
  assert.equal(s.feed(connect), null);
  // Only the fixed header of a 2 MiB PUBLISH: no body has been sent yet.
  const header = Buffer.concat([Buffer.from([0x30]), encodeLength(2 * 1024 * 1024)]);
  assert.equal(header.length, 5);
  assert.match(s.feed(header) ?? '', /announces \d+ bytes, limit 1000/);
});

test('refuses a header split across reads as soon as the length is known to be too big', () => {
  const s = createFrameScanner(limits);
  s.feed(connect);
  assert.equal(s.feed(Buffer.from([0x30])), null);
  assert.equal(s.feed(Buffer.from([0x80 | 0x7f])), null); // 127 so far, continuation
  assert.match(s.feed(Buffer.from([0x08])) ?? '', /limit 1000/); // 127 + 8*128
});

test('caps CONNECT separately', () => {
  const big = encodeConnect({ clientId: 'x'.repeat(200) });
  assert.match(createFrameScanner(limits).feed(big) ?? '', /limit 100/);
});

test('the first packet must be CONNECT; reserved types and 5-byte lengths are refused', () => {
  assert.equal(
    createFrameScanner(limits).feed(encodePublish('a', 'b')),
    'first packet is not CONNECT',
  );
  const s = createFrameScanner(limits);
  s.feed(connect);
  assert.match(s.feed(Buffer.from([0xf0, 0])) ?? '', /reserved packet type 15/);
  const t = createFrameScanner({ maxPacketSize: 2 ** 30, maxConnectSize: 100 });
  t.feed(connect);
  assert.equal(t.feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff])), 'malformed remaining length');
});

test('a second CONNECT is a protocol violation, in one read or two', () => {
  assert.equal(
    createFrameScanner(limits).feed(Buffer.concat([connect, connect])),
    'second CONNECT',
  );
  const s = createFrameScanner(limits);
  assert.equal(s.feed(connect), null);
  assert.equal(s.feed(connect.subarray(0, 1)), 'second CONNECT');
});

test('guardStream destroys both sides on a violation and passes good bytes through', async () => {
  const inner = new PassThrough();
  const reasons: string[] = [];
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 1 << 20 }, (r) => reasons.push(r));
  g.on('error', () => {});
  inner.write(connect);
  const [chunk] = (await once(g, 'data')) as [Buffer];
  assert.deepEqual(chunk, connect);
  inner.write(Buffer.concat([Buffer.from([0x30]), encodeLength(5000)]));
  await closed(g);
  assert.equal(inner.destroyed, true);
  assert.match(reasons[0] ?? '', /announces 5000 bytes/);
});

test('guardStream drops a peer that does not read once the outbound queue is over the cap', async () => {
  // A peer that never reads: its writes never complete.
  const inner = new Duplex({ read() {}, write() {}, writableHighWaterMark: 16 });
  const reasons: string[] = [];
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 4096 }, (r) => reasons.push(r));
  g.on('error', () => {});
  const gone = closed(g);
  // One message a turn: what a turn writes counts once the turn is over.
  for (let i = 0; i < 10 && !g.destroyed; i++) {
    g.write(Buffer.alloc(1024));
    await new Promise((r) => setImmediate(r));
  }
  await gone;
  assert.match(reasons[0] ?? '', /peer not reading/);
});

test('one message bigger than the queue cap still goes to a peer that keeps up', async () => {
  const { inner, written } = recordingPeer();
  const reasons: string[] = [];
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 4096 }, (r) => reasons.push(r));
  g.write(Buffer.alloc(10 * 1024)); // a vm.list of many VMs, say
  g.write(Buffer.alloc(100));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(reasons, []);
  assert.equal(g.destroyed, false);
  assert.equal(Buffer.concat(written).length, 10 * 1024 + 100);
  g.destroy();
});

test('what waited for a slow peer goes on in order, each buffer as it was (no copy into one)', async () => {
  // A peer whose first write completes only when the test says so.
  const written: Buffer[] = [];
  let release: (() => void) | null = null;
  const inner = new Duplex({
    read() {},
    writableHighWaterMark: 16,
    write(chunk: Buffer, _enc, cb) {
      written.push(chunk);
      if (written.length === 1) release = cb;
      else cb();
    },
  });
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 1 << 20 }, () => undefined);
  const parts = [0, 1, 2, 3, 4].map((i) => Buffer.alloc(1000, 65 + i));
  g.write(parts[0]);
  await new Promise((r) => setImmediate(r));
  for (const b of parts.slice(1)) {
    g.write(b);
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(written.length, 1, 'the rest waits for the peer');
  release!();
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(written, parts);
  // The very buffers written, not copies of them.
  assert.ok(written.every((b, i) => b === parts[i]));
  g.destroy();
});

test('bytes after CONNECT are held back until the broker answers (no pre-auth queueing)', async () => {
  const { inner, written } = recordingPeer();
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 1 << 20 }, () => {});
  const out: Buffer[] = [];
  g.on('data', (d: Buffer) => out.push(d));
  const publish = encodePublish('a/b', 'early');
  inner.push(Buffer.concat([connect, publish]));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(Buffer.concat(out), connect, 'only CONNECT before CONNACK');
  g.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(Buffer.concat(out), Buffer.concat([connect, publish]));
  assert.deepEqual(Buffer.concat(written), Buffer.from([0x20, 0x02, 0x00, 0x00]));
});

test('a peer that sends CONNECT, more, and EOF before CONNACK loses nothing', async () => {
  const inner = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
  const g = guardStream(inner, { ...limits, maxQueuedBytes: 1 << 20 }, () => {});
  const out: Buffer[] = [];
  g.on('data', (d: Buffer) => out.push(d));
  const ended = new Promise((resolve) => g.once('end', resolve));
  const publish = encodePublish('a/b', 'last words');
  inner.push(Buffer.concat([connect, publish]));
  inner.push(null);
  await new Promise((resolve) => setImmediate(resolve));
  g.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
  await ended;
  assert.deepEqual(Buffer.concat(out), Buffer.concat([connect, publish]));
});
