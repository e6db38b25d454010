/**
 * The hand-written qcow2 overlay is qemu-img's own, byte for byte: for sizes
 * from 1 MiB to the 64 TiB limit, raw and qcow2 templates and names of
 * several lengths; qemu-img check finds nothing wrong, qemu-img info reads
 * the size and backing file, and data written to the template reads through.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { writeQcow2Overlay } from '../../../host/volumes/qcow2-overlay.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

let dir: string;
before(async () => {
  dir = await makeTempDir('mvirt-qcow2-');
});
after(() => removeDir(dir));

const qemuImg = (...args: string[]): string =>
  execFileSync('qemu-img', args, { cwd: dir, encoding: 'utf8' });

const MIB = 1024 * 1024;
const cases: [string, number, 'raw' | 'qcow2'][] = [
  ['vol-000000000001.raw', MIB, 'raw'],
  ['vol-000000000002.raw', 1024 * MIB, 'raw'],
  ['vol-000000000003.qcow2', 100 * 1024 * MIB + 512, 'qcow2'],
  ['t', 4 * 1024 * 1024 * MIB, 'raw'],
  ['a-longer-template-name-vol-000000000004.qcow2', 5 * 1024 * 1024 * MIB, 'qcow2'],
  // The largest volume allowed (a raw file of 64 TiB is past ext4's limit).
  ['vol-000000000005.qcow2', 64 * 1024 * 1024 * MIB, 'qcow2'],
];

for (const [backing, size, fmt] of cases) {
  test(`overlay of a ${size / MIB} MiB ${fmt} template named ${backing}: qemu-img's bytes`, async () => {
    qemuImg('create', '-q', '-f', fmt, backing, String(size));
    const ours = path.join(dir, `ours-${size}.qcow2`);
    const theirs = path.join(dir, `theirs-${size}.qcow2`);
    await writeQcow2Overlay(ours, { sizeBytes: size, backingName: backing, backingFormat: fmt });
    qemuImg('create', '-q', '-f', 'qcow2', '-b', backing, '-F', fmt, theirs);
    const a = readFileSync(ours);
    const b = readFileSync(theirs);
    assert.equal(a.length, b.length, 'same length');
    const at = a.findIndex((x, i) => x !== b[i]);
    assert.equal(at, -1, `first difference at byte 0x${at.toString(16)}`);
    qemuImg('check', '-q', ours);
    const info = JSON.parse(qemuImg('info', '--output=json', ours)) as {
      'virtual-size': number;
      'backing-filename': string;
      'backing-filename-format': string;
    };
    assert.equal(info['virtual-size'], size);
    assert.equal(info['backing-filename'], backing);
    assert.equal(info['backing-filename-format'], fmt);
    assert.ok(statSync(ours).blocks * 512 <= statSync(theirs).blocks * 512, 'holes where zero');
  });
}

test('data of the template reads through; writes stay in the overlay', async () => {
  const tpl = path.join(dir, 'tpl.raw');
  await writeFile(tpl, Buffer.alloc(4 * MIB, 0x5a));
  const ov = path.join(dir, 'ov.qcow2');
  await writeQcow2Overlay(ov, { sizeBytes: 4 * MIB, backingName: 'tpl.raw', backingFormat: 'raw' });
  const out = path.join(dir, 'read.raw');
  qemuImg('convert', '-f', 'qcow2', '-O', 'raw', ov, out);
  assert.ok(readFileSync(out).every((x) => x === 0x5a));
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', ov]);
  assert.ok(
    readFileSync(tpl).every((x) => x === 0x5a),
    'the template untouched',
  );
  qemuImg('check', '-q', ov);
});

test('an existing file or a link in its place is never written', async () => {
  const f = path.join(dir, 'taken.qcow2');
  await writeFile(f, 'mine');
  await assert.rejects(
    writeQcow2Overlay(f, { sizeBytes: MIB, backingName: 'x', backingFormat: 'raw' }),
    /EEXIST/,
  );
  assert.equal(readFileSync(f, 'utf8'), 'mine');
});
