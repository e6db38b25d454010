/** The dashboard's job output text (host/dashboard/chunk-text.ts): base64 chunks decoded, split characters joined per stream. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chunkTexts } from '../../../host/dashboard/chunk-text.js';

test('base64 chunks are decoded as UTF-8, characters split across chunks joined per stream', () => {
  const e = Buffer.from('é€'); // 2 + 3 bytes
  const b64 = (b: Buffer) => b.toString('base64');
  const texts = chunkTexts([
    { seq: 0, stream: 'stdout', data: b64(e.subarray(0, 1)), encoding: 'base64' },
    { seq: 1, stream: 'stderr', data: b64(Buffer.from('err ')), encoding: 'base64' },
    { seq: 2, stream: 'stdout', data: b64(e.subarray(1, 3)), encoding: 'base64' },
    { seq: 3, stream: 'stdout', data: b64(e.subarray(3)), encoding: 'base64' },
    { seq: 4, stream: 'stdout', data: 'plain text' },
  ]);
  assert.deepEqual(texts, ['', 'err ', 'é', '€', 'plain text']);
});
