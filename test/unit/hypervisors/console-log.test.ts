import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { createBoundedLog } from '../../../host/hypervisors/console-log.js';

describe('bounded console log', () => {
  let dir = '';
  after(() => rm(dir, { recursive: true, force: true }));

  it('never exceeds its cap and keeps the newest output', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-clog-'));
    const file = path.join(dir, 'console.log');
    const cap = 4096;
    const log = await createBoundedLog(file, cap);
    let max = 0;
    for (let i = 0; i < 2000; i++) {
      log.write(`line ${i} ${'x'.repeat(i % 50)}\n`);
      if (i % 97 === 0) {
        await log.flush();
        max = Math.max(max, (await stat(file)).size);
      }
    }
    log.write(Buffer.alloc(10_000, 0x41)); // one chunk larger than the cap
    log.write('last line\n');
    await log.flush();
    const text = await readFile(file, 'utf8');
    assert.ok(max <= cap, `grew to ${max}`);
    assert.ok(text.length <= cap);
    assert.ok(text.endsWith('last line\n'));
    assert.equal(log.size, text.length);
  });

  it('appends to an existing file and trims it when already too big', async () => {
    const file = path.join(dir, 'old.log');
    await writeFile(file, 'y'.repeat(5000));
    const log = await createBoundedLog(file, 4096);
    log.write('new\n');
    await log.flush();
    const text = await readFile(file, 'utf8');
    assert.ok(text.length <= 4096 && text.endsWith('new\n'));
  });
});
