/**
 * mvirtd's side of file transfers (host/fs/transfers.ts) against a scripted
 * agent: the window and the byte budget hold whatever a guest or controller
 * does, chunks reach the agent in seq order, and a guest that answers
 * garbage, lies about sizes or disappears ends the transfer and frees what it
 * held. The agent is a fake here: what is under test is the host's bound.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { createTransfers, type TransferDeps } from '../../../host/fs/transfers.js';

const CHUNK = 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Call {
  kind: string;
  body: { seq: number; length?: number; transfer: string };
  resolve(v: unknown): void;
  reject(e: Error): void;
}

function setup(o: Partial<TransferDeps['options']> = {}) {
  const calls: Call[] = [];
  const abandoned: string[] = [];
  const t = createTransfers({
    call: (_vm, kind, body) =>
      new Promise((resolve, reject) =>
        calls.push({ kind, body: body as Call['body'], resolve, reject }),
      ),
    abandoned: (_vm, transfer) => abandoned.push(transfer),
    options: {
      window: 4,
      bufferBytes: 10 * CHUNK,
      maxTransfers: 8,
      callTimeoutMs: 1000,
      idleMs: 60_000,
      ...o,
    },
  });
  return { t, calls, abandoned };
}

const codeOf = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    return (err as MvirtError).code;
  }
  return 'ok';
};

const write = (t: ReturnType<typeof setup>['t'], transfer: string, seq: number, bytes = CHUNK) =>
  t.write('vm-1', seq, {
    transfer,
    seq,
    data: new Uint8Array(bytes),
    ...(seq === 0 ? { open: { path: '/f' } } : {}),
  });

test('a guest that never answers holds at most the window; the rest is refused, not kept', async () => {
  const { t, calls } = setup();
  const pending = [0, 1, 2, 3].map((s) => write(t, 'transfer-1', s));
  for (const p of pending) p.catch(() => undefined);
  assert.equal(calls.length, 4);
  assert.equal(t.heldBytes(), 4 * CHUNK);
  assert.equal(await codeOf(write(t, 'transfer-1', 4)), 'TRANSFER_BUSY');
  // A chunk far ahead of the window, and one already sent, are refused too.
  assert.equal(await codeOf(write(t, 'transfer-1', 40)), 'TRANSFER_BUSY');
  assert.equal(await codeOf(write(t, 'transfer-1', 2)), 'TRANSFER_OFFSET');
  assert.equal(t.heldBytes(), 4 * CHUNK);
  // One answer frees one place.
  calls[0]!.resolve({ written: CHUNK });
  await pending[0];
  assert.equal(t.heldBytes(), 3 * CHUNK);
  const next = write(t, 'transfer-1', 4);
  next.catch(() => undefined);
  assert.equal(calls.length, 5);
  // The VM is killed: the agent link fails what was sent, the transfer ends.
  t.dropVm('vm-1', 'the VM was killed');
  for (const c of calls.slice(1)) c.reject(new MvirtError('AGENT_UNAVAILABLE', 'gone'));
  assert.equal(await codeOf(pending[1]!), 'AGENT_UNAVAILABLE');
  await next.catch(() => undefined);
  assert.equal(t.heldBytes(), 0);
  assert.equal(t.open(), 0);
});

test('all transfers together stay within the byte budget', async () => {
  const { t } = setup({ window: 8 });
  let refused = 0;
  for (let i = 0; i < 5; i++) {
    for (let s = 0; s < 3; s++) {
      const before = t.heldBytes();
      write(t, `transfer-b${i}`, s).catch(() => undefined);
      if (t.heldBytes() === before) refused++;
      assert.ok(t.heldBytes() <= 10 * CHUNK, `held ${t.heldBytes()}`);
    }
  }
  assert.equal(t.heldBytes(), 10 * CHUNK);
  assert.equal(refused, 5);
  // A refused opening leaves no transfer behind.
  assert.equal(t.open(), 4);
});

test('chunks that overtake each other reach the agent in seq order', async () => {
  const { t, calls } = setup();
  const first = write(t, 'transfer-o', 0);
  calls[0]!.resolve({ written: CHUNK });
  await first;
  const later = [3, 2, 1].map((s) => write(t, 'transfer-o', s));
  assert.deepEqual(
    calls.map((c) => c.body.seq),
    [0, 1, 2, 3],
  );
  for (const [i, c] of calls.slice(1).entries()) c.resolve({ written: (i + 2) * CHUNK });
  assert.deepEqual(
    (await Promise.all(later)).map((a) => a.written),
    [4 * CHUNK, 3 * CHUNK, 2 * CHUNK],
  );
  assert.equal(await codeOf(write(t, 'transfer-none', 1)), 'TRANSFER_NOT_FOUND');
});

test('a guest answering garbage or lying about a read ends the transfer and frees it', async () => {
  const cases: [string, (asked: number) => unknown, string][] = [
    ['longer than asked', (n) => ({ data: new Uint8Array(n + 1), eof: false }), 'AGENT_ERROR'],
    ['an unknown field', (n) => ({ data: new Uint8Array(n), eof: false, extra: 1 }), 'AGENT_ERROR'],
    ['empty before the end', () => ({ data: new Uint8Array(0), eof: false }), 'AGENT_ERROR'],
    ['not an object', () => 'garbage', 'AGENT_ERROR'],
    [
      'a size it did not send',
      () => ({
        data: new Uint8Array(3),
        eof: true,
        end: { size: 1 << 30, sha256: sha(new Uint8Array(3)) },
      }),
      'TRANSFER_MISMATCH',
    ],
    [
      'a sha256 of other bytes',
      () => ({
        data: new Uint8Array(3),
        eof: true,
        end: { size: 3, sha256: sha(Buffer.from('abc')) },
      }),
      'TRANSFER_MISMATCH',
    ],
  ];
  for (const [what, answer, code] of cases) {
    const { t, calls, abandoned } = setup();
    const reads = [0, 1].map((seq) =>
      t.read('vm-1', seq, {
        transfer: 'transfer-r',
        seq,
        length: CHUNK,
        ...(seq === 0 ? { open: { path: '/f' } } : {}),
      }),
    );
    reads[1]!.catch(() => undefined);
    calls[0]!.resolve(answer(CHUNK));
    assert.equal(await codeOf(reads[0]!), code, what);
    calls[1]?.resolve({ data: new Uint8Array(CHUNK), eof: false });
    await reads[1]!.catch(() => undefined);
    assert.equal(t.open(), 0, what);
    assert.equal(t.heldBytes(), 0, what);
    if (code === 'AGENT_ERROR') assert.deepEqual(abandoned, ['transfer-r'], what);
  }
});

test('an honest read ends with the size and sha256 mvirtd counted itself', async () => {
  const { t, calls } = setup();
  const data = randomBytes(CHUNK + 5);
  const reads = [0, 1].map((seq) =>
    t.read('vm-1', seq, {
      transfer: 'transfer-h',
      seq,
      length: CHUNK,
      ...(seq === 0 ? { open: { path: '/f' } } : {}),
    }),
  );
  // Answers out of order: handled in seq order all the same.
  calls[1]!.resolve({
    data: data.subarray(CHUNK),
    eof: true,
    end: { size: data.length, sha256: sha(data) },
  });
  calls[0]!.resolve({ data: data.subarray(0, CHUNK), eof: false });
  const [a, b] = await Promise.all(reads);
  assert.equal(a!.eof, false);
  assert.deepEqual(b!.end, { size: data.length, sha256: sha(data) });
  assert.equal(t.open(), 0);
});

test('an idle transfer ends, and the agent is told', async () => {
  const { t, calls, abandoned } = setup({ idleMs: 50 });
  const w = write(t, 'transfer-idle', 0);
  calls[0]!.resolve({ written: CHUNK });
  await w;
  await new Promise((r) => setTimeout(r, 120));
  assert.deepEqual(abandoned, ['transfer-idle']);
  assert.equal(await codeOf(write(t, 'transfer-idle', 1)), 'TRANSFER_NOT_FOUND');
});

test('an agent error for a file becomes the API error of that name', async () => {
  const { t, calls } = setup();
  const w = write(t, 'transfer-e', 0);
  calls[0]!.reject(
    new MvirtError('AGENT_ERROR', '/f: ENOSPC', { details: { code: 'GUEST_DISK_FULL' } }),
  );
  assert.equal(await codeOf(w), 'GUEST_DISK_FULL');
  assert.equal(t.heldBytes(), 0);
});
