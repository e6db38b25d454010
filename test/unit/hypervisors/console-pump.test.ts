/**
 * The console pump on real FIFOs, with a child process in QEMU's place: it
 * holds both FIFOs open read-write (as `-chardev pipe` does) and writes its
 * console one byte per write(), as QEMU's 16550 does.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import pino from 'pino';
import {
  makeConsoleFifos,
  PACE_MS,
  startConsolePump,
} from '../../../host/hypervisors/console-pump.js';

let dir = '';
before(async () => (dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-cpump-'))));
after(() => rm(dir, { recursive: true, force: true }));

/** A stand-in QEMU: opens both FIFOs O_RDWR, says "open", then writes `bytes` one at a time. */
function fakeQemu(base: string, bytes: number) {
  const code = `
    const fs = require('node:fs');
    const input = fs.openSync(${JSON.stringify(`${base}.in`)}, fs.constants.O_RDWR);
    const out = fs.openSync(${JSON.stringify(`${base}.out`)}, fs.constants.O_RDWR);
    process.stdout.write('open\\n');
    process.stdin.once('data', () => {
      const one = Buffer.alloc(1);
      for (let i = 0; i < ${bytes}; i++) { one[0] = 97 + (i % 26); fs.writeSync(out, one); }
      process.stdout.write('done\\n');
      process.stdin.once('data', () => process.exit(0));
    });`;
  const child = spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  child.stdout.setEncoding('utf8').on('data', (d: string) => lines.push(...d.split('\n')));
  const line = async (want: string) => {
    while (!lines.includes(want)) await once(child.stdout, 'data');
  };
  return { child, line };
}

const collect = (v: Duplex) => {
  const chunks: Buffer[] = [];
  v.on('data', (c: Buffer) => chunks.push(c));
  return chunks;
};

test('output written a byte at a time is read in few, paced reads; none is lost', async () => {
  const base = path.join(dir, 'a');
  await makeConsoleFifos(base);
  const qemu = fakeQemu(base, 40_000);
  await qemu.line('open');
  const pump = await startConsolePump({
    source: { kind: 'pipe', base },
    logFile: path.join(dir, 'a.log'),
    maxLogBytes: 1024 * 1024,
    connect: { timeoutMs: 1000 },
    log: pino({ level: 'silent' }),
  });
  const viewer = pump.connect();
  const chunks = collect(viewer);
  const ended = once(viewer, 'end');
  const started = performance.now();
  qemu.child.stdin.write('go\n');
  await qemu.line('done');
  qemu.child.stdin.write('end\n');
  await once(qemu.child, 'exit');
  // QEMU gone: the FIFO ends, the pump closes, the viewer ends.
  await pump.closed;
  await ended;
  const ms = performance.now() - started;
  const got = Buffer.concat(chunks);
  assert.equal(got.length, 40_000);
  assert.equal(got.subarray(0, 26).toString(), 'abcdefghijklmnopqrstuvwxyz');
  await pump.log.flush();
  assert.deepEqual(await readFile(path.join(dir, 'a.log')), got);
  // 40,000 writes; at most one read per pace (and the final one).
  assert.ok(chunks.length <= ms / PACE_MS + 2, `${chunks.length} reads in ${ms.toFixed(0)} ms`);
});

test('input reaches the guest side; input nobody reads is dropped, not buffered without end', async () => {
  const base = path.join(dir, 'b');
  await makeConsoleFifos(base);
  const qemu = fakeQemu(base, 0);
  await qemu.line('open');
  const pump = await startConsolePump({
    source: { kind: 'pipe', base },
    logFile: path.join(dir, 'b.log'),
    maxLogBytes: 4096,
    connect: { timeoutMs: 1000 },
    log: pino({ level: 'silent' }),
  });
  const viewer = pump.connect();
  await new Promise<void>((resolve, reject) =>
    viewer.write('ls\n', (e) => (e ? reject(e) : resolve())),
  );
  const fd = openSync(`${base}.in`, constants.O_RDONLY | constants.O_NONBLOCK);
  const buf = Buffer.alloc(16);
  assert.equal(buf.subarray(0, readSync(fd, buf)).toString(), 'ls\n');
  closeSync(fd);
  // Nobody reads console.in now: the FIFO takes 64 KiB, the pump 64 KiB more, the rest is dropped.
  const piece = Buffer.alloc(4096, 0x78);
  for (let i = 0; i < 64; i++) {
    await new Promise<void>((resolve, reject) =>
      viewer.write(piece, (e) => (e ? reject(e) : resolve())),
    );
  }
  assert.ok(pump.droppedInput >= 64 * 4096 - 2 * 64 * 1024 - 4096, `dropped ${pump.droppedInput}`);
  assert.ok(pump.droppedInput < 64 * 4096);
  assert.equal(viewer.destroyed, false, 'the viewer keeps its output');
  pump.close();
  qemu.child.kill();
});
