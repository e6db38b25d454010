/**
 * Console pacing (host/hypervisors/console-pace.ts) on a real unix socket: a
 * guest writing its console a few bytes at a time is read at most once per
 * rest, nothing is lost, and a big read rests as long as its bytes take at
 * the byte rate.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { paceReads } from '../../../host/hypervisors/console-pace.js';
import { socketPair } from '../../support/broker-fixtures.js';

test('many small writes: few reads, every byte', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-pace-'));
  const { host, guest } = await socketPair(dir);
  const stop = paceReads(host, { minGapMs: 20, bytesPerS: 10 * 1024 * 1024 });
  let reads = 0;
  let bytes = 0;
  const all = new Promise<void>((resolve) =>
    host.on('data', (c: Buffer) => {
      reads++;
      bytes += c.length;
      if (bytes === 20_000) resolve();
    }),
  );
  const started = performance.now();
  for (let i = 0; i < 2000; i++) guest.write('0123456789');
  await all;
  const ms = performance.now() - started;
  // Unpaced, the same writes took hundreds of reads here; paced, one per 20 ms at most.
  assert.ok(reads <= ms / 20 + 2, `${reads} reads in ${ms.toFixed(0)} ms`);
  stop();
  guest.destroy();
  host.destroy();
  rmSync(dir, { recursive: true, force: true });
});

test('a big read rests as long as its bytes take at the byte rate', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-pace-'));
  const { host, guest } = await socketPair(dir);
  const stop = paceReads(host, { minGapMs: 1, bytesPerS: 512 * 1024 });
  const arrivals: Array<{ at: number; n: number }> = [];
  let total = 0;
  const all = new Promise<void>((resolve) =>
    host.on('data', (c: Buffer) => {
      arrivals.push({ at: performance.now(), n: c.length });
      total += c.length;
      if (total === 256 * 1024) resolve();
    }),
  );
  const started = performance.now();
  guest.write(Buffer.alloc(256 * 1024)); // more than one read takes
  await all;
  // 256 KiB at 512 KiB/s: whatever the reads, the last one comes after the
  // rests of those before it, which add up to (256 KiB - last read) / rate.
  assert.ok(arrivals.length >= 2, 'read in more than one piece');
  const last = arrivals.at(-1)!;
  const owed = ((256 * 1024 - last.n) / (512 * 1024)) * 1000;
  assert.ok(
    last.at - started >= owed * 0.9,
    `last read at ${(last.at - started).toFixed(0)} ms, owed ${owed.toFixed(0)} ms`,
  );
  stop();
  guest.destroy();
  host.destroy();
  rmSync(dir, { recursive: true, force: true });
});
