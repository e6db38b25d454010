/**
 * Console output batching (host/vm/console-out.ts): a guest writing its
 * console byte by byte costs one message per batch, not one per write;
 * a full batch goes at once; nothing is kept or published while nobody listens.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createConsoleOut } from '../../../host/vm/console-out.js';

function recorder(listening = true) {
  const sent: Buffer[] = [];
  let resolveNext: (() => void) | null = null;
  const state = { listening };
  const out = createConsoleOut({
    publish: (p) => {
      sent.push(p);
      resolveNext?.();
    },
    listening: () => state.listening,
    batch: { maxBytes: 1024, maxDelayMs: 20 },
  });
  const next = () => new Promise<void>((r) => (resolveNext = r));
  return { out, sent, next, state };
}

test('writes within the delay go out as one message, in order', async () => {
  const r = recorder();
  const published = r.next();
  for (let i = 0; i < 100; i++) r.out.push(Buffer.from(`${i % 10}`));
  assert.equal(r.sent.length, 0, 'nothing before the delay');
  await published;
  assert.equal(r.sent.length, 1);
  assert.equal(r.sent[0]!.toString(), '0123456789'.repeat(10));
});

test('a full batch goes at once; the rest waits for the delay', async () => {
  const r = recorder();
  r.out.push(Buffer.alloc(1000, 'a'));
  r.out.push(Buffer.alloc(100, 'b'));
  assert.equal(r.sent.length, 1, 'past maxBytes: published without waiting');
  assert.equal(r.sent[0]!.length, 1100);
  const published = r.next();
  r.out.push(Buffer.from('tail'));
  await published;
  assert.deepEqual(
    r.sent.map((b) => b.toString().slice(-4)),
    ['bbbb', 'tail'],
  );
});

test('nobody listening: nothing is kept or published, and the bytes are counted', async () => {
  const r = recorder(false);
  r.out.push(Buffer.from('unheard'));
  r.out.flush();
  assert.equal(r.sent.length, 0);
  assert.equal(r.out.unheard, 7);
  r.state.listening = true;
  r.out.push(Buffer.from('heard'));
  r.out.flush();
  assert.deepEqual(
    r.sent.map((b) => b.toString()),
    ['heard'],
  );
});
