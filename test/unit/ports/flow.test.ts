/**
 * Credit-based flow control of one port-forward stream (protocol/port-flow.ts):
 * order restored, credit enforced, credit returned in batches, a sender that
 * stops when its credit is spent and goes on when it comes back.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createInbound, createOutbound } from '../../../protocol/port-flow.js';
import { PORT_CHUNK_BYTES } from '../../../protocol/ports.js';

const bytes = (n: number, fill = 1) => new Uint8Array(n).fill(fill);
/** Run deferred work at once: the outbound then sends as it is called. */
const now = (fn: () => void) => fn();

function inbound(window: number) {
  const written: Uint8Array[] = [];
  const grants: number[] = [];
  let ended = 0;
  const ib = createInbound(window, {
    write: (d) => written.push(d),
    end: () => ended++,
    grant: (b) => grants.push(b),
  });
  return { ib, written, grants, ended: () => ended };
}

test('inbound puts chunks back in order and ends after the last', () => {
  const { ib, written, ended } = inbound(1000);
  assert.equal(ib.data(2, bytes(3, 3)), 'ok');
  assert.equal(ib.end(3), 'ok');
  assert.equal(ib.data(1, bytes(2, 2)), 'ok');
  assert.equal(written.length, 0, 'nothing before chunk 0');
  assert.equal(ended(), 0);
  assert.equal(ib.data(0, bytes(1, 1)), 'ok');
  assert.deepEqual(
    written.map((w) => w[0]),
    [1, 2, 3],
  );
  assert.equal(ended(), 1);
  assert.equal(ib.data(1, bytes(2)), 'duplicate', 'a chunk again is a duplicate');
  assert.equal(ib.data(3, bytes(1)), 'violation', 'data after the end');
});

test('inbound refuses more than the credit, and chunks the window cannot hold', () => {
  const { ib } = inbound(100);
  assert.equal(ib.data(0, bytes(60)), 'ok');
  assert.equal(ib.data(1, bytes(41)), 'violation', '101 bytes sent on 100 of credit');
  const b = inbound(100).ib;
  assert.equal(b.data(100, bytes(1)), 'violation', 'a sequence number 100 chunks ahead');
  assert.equal(b.data(5, new Uint8Array(0)), 'violation', 'an empty chunk');
  const c = inbound(100).ib;
  assert.equal(c.data(0, bytes(10)), 'ok');
  assert.equal(c.end(5), 'ok');
  assert.equal(c.end(6), 'violation', 'a second, different end');
  const e = inbound(100).ib;
  assert.equal(e.data(3, bytes(1)), 'ok');
  assert.equal(e.end(2), 'violation', 'an end before data already sent');
});

test('inbound gives credit back once a quarter of the window is consumed', () => {
  const { ib, grants } = inbound(1000);
  for (let i = 0; i < 10; i++) assert.equal(ib.data(i, bytes(100)), 'ok');
  assert.equal(ib.buffered, 1000);
  ib.consumed(100);
  ib.consumed(100);
  assert.deepEqual(grants, [], 'less than a quarter: not yet');
  ib.consumed(100);
  assert.deepEqual(grants, [300]);
  assert.equal(ib.data(10, bytes(300)), 'ok', 'the credit given back is usable');
  assert.equal(ib.data(11, bytes(1)), 'violation', 'and no more');
});

test('outbound sends within its credit, keeps the rest, pauses and resumes its source', () => {
  const sent: Array<[number, number]> = [];
  const calls: string[] = [];
  let endSeq = -1;
  const ob = createOutbound(
    100,
    {
      data: (seq, d) => sent.push([seq, d.length]),
      end: (seq) => (endSeq = seq),
      pause: () => calls.push('pause'),
      resume: () => calls.push('resume'),
    },
    now,
  );
  ob.push(bytes(70));
  ob.push(bytes(50));
  assert.deepEqual(sent, [
    [0, 70],
    [1, 30],
  ]);
  assert.equal(ob.pending, 20);
  assert.deepEqual(calls, ['pause']);
  ob.finish();
  assert.equal(endSeq, -1, 'the end waits behind the kept bytes');
  assert.equal(ob.grant(10), 'ok');
  assert.deepEqual(sent.at(-1), [2, 10]);
  assert.equal(ob.grant(90), 'ok');
  assert.deepEqual(sent.at(-1), [3, 10]);
  assert.equal(endSeq, 4);
  assert.deepEqual(calls, ['pause'], 'a source that has ended is not read again');
  assert.equal(ob.grant(21), 'violation', 'credit beyond the window (20 bytes are out)');
});

test('outbound cuts big reads into chunks', () => {
  const sent: number[] = [];
  const ob = createOutbound(
    4 * PORT_CHUNK_BYTES,
    {
      data: (_s, d) => sent.push(d.length),
      end: () => undefined,
      pause: () => undefined,
      resume: () => undefined,
    },
    now,
  );
  ob.push(bytes(2 * PORT_CHUNK_BYTES + 5));
  assert.deepEqual(sent, [PORT_CHUNK_BYTES, PORT_CHUNK_BYTES, 5]);
});

test('outbound gathers the reads of one turn into full chunks', async () => {
  const sent: number[] = [];
  let paused = false;
  const ob = createOutbound(4 * PORT_CHUNK_BYTES, {
    data: (_s, d) => sent.push(d.length),
    end: () => undefined,
    pause: () => (paused = true),
    resume: () => (paused = false),
  });
  for (let i = 0; i < 10; i++) ob.push(bytes(8192));
  assert.deepEqual(sent, [], 'nothing before the turn ends');
  assert.equal(paused, true, 'a chunk waits: the source is paused');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(sent, [PORT_CHUNK_BYTES, 2 * 8192]);
  assert.equal(paused, false);
});
