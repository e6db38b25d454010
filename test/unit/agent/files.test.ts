/**
 * The agent's file core (guest-agent/files.ts) on a temporary folder of this
 * host: chunked writes that appear only once checked, resumes, reads with
 * their end check, tar packing and unpacking (the host's tar for busybox's),
 * a full disk, and the single operations. Plus one round through the agent's
 * dispatch over a real broker (the wire messages and their error codes).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { createFiles } from '../../../guest-agent/files.js';
import { partPath } from '../../../guest-agent/fs-transfers.js';
import { createNodeFs, type GuestFs } from '../../../guest-agent/platform/files.js';
import { AgentError } from '../../../guest-agent/errors.js';
import { FS_CHUNK_BYTES } from '../../../protocol/fs.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { createFakePlatform } from '../../support/agent-platform.js';
import { startHarness } from '../../support/agent-harness.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const noLog = () => undefined;

function setup(fs?: GuestFs) {
  const platform = createFakePlatform(() => undefined);
  if (fs) platform.fs = fs;
  return createFiles(platform, noLog);
}

/** The code of an agent error (what the reply carries). */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AgentError, String(err));
    return err.code;
  }
  assert.fail('expected a failure');
}

async function writeChunks(
  files: ReturnType<typeof setup>,
  target: string,
  data: Buffer,
  transfer: string,
  o: { final?: boolean; mode?: number } = {},
) {
  const n = Math.max(1, Math.ceil(data.length / FS_CHUNK_BYTES));
  const calls = [];
  for (let i = 0; i < n; i++) {
    const chunk = data.subarray(i * FS_CHUNK_BYTES, (i + 1) * FS_CHUNK_BYTES);
    calls.push(
      files.write({
        id: `w${i}`,
        transfer,
        seq: i,
        data: new Uint8Array(chunk),
        ...(i === 0 ? { open: { path: target, ...(o.mode ? { mode: o.mode } : {}) } } : {}),
        ...(i === n - 1 && o.final !== false
          ? { final: { size: data.length, sha256: sha(data) } }
          : {}),
      }),
    );
  }
  // All sent at once: the core takes them in seq order.
  return Promise.all(calls);
}

test('a chunked write appears only once complete and checked, with its mode', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const target = path.join(dir, 'blob');
    const data = randomBytes(3 * FS_CHUNK_BYTES + 1234);
    // Everything but the last chunk: only the hidden partial file exists.
    await writeChunks(files, target, data.subarray(0, 3 * FS_CHUNK_BYTES), 'transfer-a', {
      final: false,
    });
    assert.equal(existsSync(target), false);
    assert.equal(statSync(partPath(target, 'transfer-a')).size, 3 * FS_CHUNK_BYTES);
    const r = await files.write({
      id: 'last',
      transfer: 'transfer-a',
      seq: 3,
      data: data.subarray(3 * FS_CHUNK_BYTES),
      final: { size: data.length, sha256: sha(data) },
    });
    assert.deepEqual(r, {
      written: data.length,
      complete: { size: data.length, sha256: sha(data) },
    });
    assert.ok(readFileSync(target).equals(data));
    assert.equal(existsSync(partPath(target, 'transfer-a')), false);
    assert.equal(statSync(target).mode & 0o777, 0o644);
    await writeChunks(files, path.join(dir, 'x'), Buffer.from('#!/bin/sh\n'), 'transfer-m', {
      mode: 0o750,
    });
    assert.equal(statSync(path.join(dir, 'x')).mode & 0o777, 0o750);
    assert.equal(files.open(), 0);
  } finally {
    await removeDir(dir);
  }
});

test('a wrong size or sha256 leaves nothing: no target, no partial file', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const target = path.join(dir, 'f');
    writeFileSync(target, 'old contents');
    const data = randomBytes(1000);
    const code = await codeOf(
      files.write({
        id: 'a',
        transfer: 'transfer-bad',
        seq: 0,
        data,
        open: { path: target },
        final: { size: 1000, sha256: sha(Buffer.from('something else')) },
      }),
    );
    assert.equal(code, 'TRANSFER_MISMATCH');
    assert.equal(readFileSync(target, 'utf8'), 'old contents');
    assert.deepEqual(readdirSync(dir), ['f']);
  } finally {
    await removeDir(dir);
  }
});

test('a cut write resumes from its partial file after the agent restarted', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const target = path.join(dir, 'big');
    const data = randomBytes(4 * FS_CHUNK_BYTES);
    await writeChunks(setup(), target, data.subarray(0, 2 * FS_CHUNK_BYTES + 7), 'transfer-r', {
      final: false,
    });
    // A new agent: it knows nothing of the transfer but finds the partial file.
    const files = setup();
    assert.equal(
      await codeOf(files.write({ id: 'x', transfer: 'transfer-r', seq: 5, data: Buffer.alloc(1) })),
      'TRANSFER_NOT_FOUND',
    );
    const probe = await files.write({
      id: 'p',
      transfer: 'transfer-r',
      seq: 0,
      data: new Uint8Array(0),
      open: { path: target, resume: true },
    });
    assert.equal(probe.written, 2 * FS_CHUNK_BYTES + 7);
    const r = await files.write({
      id: 'q',
      transfer: 'transfer-r',
      seq: 1,
      data: data.subarray(probe.written),
      final: { size: data.length, sha256: sha(data) },
    });
    assert.equal(r.complete?.sha256, sha(data));
    assert.ok(readFileSync(target).equals(data));
    // An offset beyond the partial file is refused; one inside cuts it back.
    await writeChunks(files, target + '2', data.subarray(0, 100), 'transfer-o', { final: false });
    assert.equal(
      await codeOf(
        files.write({
          id: 'o',
          transfer: 'transfer-o',
          seq: 0,
          data: new Uint8Array(0),
          open: { path: target + '2', offset: 101 },
        }),
      ),
      'TRANSFER_OFFSET',
    );
    const cut = await files.write({
      id: 'o2',
      transfer: 'transfer-o',
      seq: 0,
      data: data.subarray(50, 60),
      open: { path: target + '2', offset: 50 },
      final: { size: 60, sha256: sha(data.subarray(0, 60)) },
    });
    assert.equal(cut.complete?.size, 60);
  } finally {
    await removeDir(dir);
  }
});

test('chunks out of order end the transfer', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const target = path.join(dir, 'f');
    await files.write({
      id: 'a',
      transfer: 'transfer-s',
      seq: 0,
      data: Buffer.alloc(1),
      open: { path: target },
    });
    assert.equal(
      await codeOf(files.write({ id: 'b', transfer: 'transfer-s', seq: 2, data: Buffer.alloc(1) })),
      'TRANSFER_OFFSET',
    );
    assert.equal(
      await codeOf(files.write({ id: 'c', transfer: 'transfer-s', seq: 1, data: Buffer.alloc(1) })),
      'TRANSFER_NOT_FOUND',
    );
    assert.equal(existsSync(target), false);
  } finally {
    await removeDir(dir);
  }
});

test('reads come in chunks and end with the whole file’s size and sha256', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const file = path.join(dir, 'r');
    const data = randomBytes(2 * FS_CHUNK_BYTES + 10);
    writeFileSync(file, data);
    const got: Buffer[] = [];
    const answers = await Promise.all(
      [0, 1, 2].map((seq) =>
        files.read({
          id: `r${seq}`,
          transfer: 'transfer-read',
          seq,
          length: FS_CHUNK_BYTES,
          ...(seq === 0 ? { open: { path: file } } : {}),
        }),
      ),
    );
    for (const a of answers) got.push(a.data);
    assert.deepEqual(
      answers.map((a) => a.eof),
      [false, false, true],
    );
    assert.ok(Buffer.concat(got).equals(data));
    assert.deepEqual(answers[2]!.end, { size: data.length, sha256: sha(data) });
    // From an offset: the end still covers the whole file.
    const a = await files.read({
      id: 'o',
      transfer: 'transfer-off',
      seq: 0,
      length: FS_CHUNK_BYTES,
      open: { path: file, offset: 2 * FS_CHUNK_BYTES },
    });
    assert.equal(a.data.length, 10);
    assert.deepEqual(a.end, { size: data.length, sha256: sha(data) });
    assert.equal(
      await codeOf(
        files.read({ id: 'd', transfer: 'transfer-dir', seq: 0, length: 10, open: { path: dir } }),
      ),
      'FILE_TYPE',
    );
    // A FIFO is refused before it is opened (its open would block an I/O thread).
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    assert.equal(
      await codeOf(
        files.read({
          id: 'f',
          transfer: 'transfer-fifo',
          seq: 0,
          length: 10,
          open: { path: fifo },
        }),
      ),
      'FILE_TYPE',
    );
    // A symbolic link is followed.
    symlinkSync(file, path.join(dir, 'link'));
    const viaLink = await files.read({
      id: 'l',
      transfer: 'transfer-link',
      seq: 0,
      length: 16,
      open: { path: path.join(dir, 'link') },
    });
    assert.ok(viaLink.data.equals(data.subarray(0, 16)));
    assert.equal(
      await codeOf(
        files.read({
          id: 'n',
          transfer: 'transfer-none',
          seq: 0,
          length: 10,
          open: { path: path.join(dir, 'nope') },
        }),
      ),
      'FILE_NOT_FOUND',
    );
  } finally {
    await removeDir(dir);
  }
});

test('a directory packs as tar and unpacks, once checked, into another', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const src = path.join(dir, 'src');
    mkdirSync(path.join(src, 'a', 'b'), { recursive: true });
    const big = randomBytes(FS_CHUNK_BYTES + 99);
    writeFileSync(path.join(src, 'a', 'b', 'big'), big);
    writeFileSync(path.join(src, 'top.txt'), 'hello\n');
    const parts: Buffer[] = [];
    for (let seq = 0; ; seq++) {
      const a = await files.read({
        id: `p${seq}`,
        transfer: 'transfer-pack',
        seq,
        length: FS_CHUNK_BYTES,
        ...(seq === 0 ? { open: { path: src, pack: 'tar' as const } } : {}),
      });
      parts.push(a.data);
      if (a.eof) break;
    }
    const archive = Buffer.concat(parts);
    const dst2 = path.join(dir, 'dst2');
    const n = Math.ceil(archive.length / FS_CHUNK_BYTES);
    for (let i = 0; i < n; i++)
      await files.write({
        id: `u${i}`,
        transfer: 'transfer-unpack3',
        seq: i,
        data: archive.subarray(i * FS_CHUNK_BYTES, (i + 1) * FS_CHUNK_BYTES),
        ...(i === 0 ? { open: { path: dst2, unpack: 'tar' as const } } : {}),
        ...(i === n - 1 ? { final: { size: archive.length, sha256: sha(archive) } } : {}),
      });
    assert.ok(readFileSync(path.join(dst2, 'a', 'b', 'big')).equals(big));
    assert.equal(readFileSync(path.join(dst2, 'top.txt'), 'utf8'), 'hello\n');
    assert.deepEqual(readdirSync(dir).sort(), ['dst2', 'src']);
  } finally {
    await removeDir(dir);
  }
});

test('a full disk is GUEST_DISK_FULL and nothing appears at the target', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const real = createNodeFs();
    let budget = FS_CHUNK_BYTES;
    const full: GuestFs = {
      ...real,
      open: async (p, how, mode) => {
        const f = await real.open(p, how, mode);
        return {
          ...f,
          write: async (buf, pos) => {
            if (budget < buf.length)
              throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
            budget -= buf.length;
            return f.write(buf, pos);
          },
        };
      },
    };
    const files = setup(full);
    const target = path.join(dir, 'f');
    const data = randomBytes(3 * FS_CHUNK_BYTES);
    const results = await Promise.allSettled(
      [0, 1, 2].map((seq) =>
        files.write({
          id: `f${seq}`,
          transfer: 'transfer-full',
          seq,
          data: data.subarray(seq * FS_CHUNK_BYTES, (seq + 1) * FS_CHUNK_BYTES),
          ...(seq === 0 ? { open: { path: target } } : {}),
          ...(seq === 2 ? { final: { size: data.length, sha256: sha(data) } } : {}),
        }),
      ),
    );
    assert.equal(results[0]!.status, 'fulfilled');
    const codes = results
      .slice(1)
      .map((r) => (r.status === 'rejected' ? (r.reason as AgentError).code : 'ok'));
    assert.deepEqual(codes, ['GUEST_DISK_FULL', 'TRANSFER_NOT_FOUND']);
    assert.equal(existsSync(target), false);
  } finally {
    await removeDir(dir);
  }
});

test('stat, list, mkdir, move and remove, with their errors', async () => {
  const dir = await makeTempDir('mvirt-files-');
  try {
    const files = setup();
    const d = path.join(dir, 'd', 'e');
    assert.equal(await codeOf(files.op({ kind: 'mkdir', path: d })), 'FILE_NOT_FOUND');
    const made = (await files.op({ kind: 'mkdir', path: d, parents: true, mode: 0o700 })) as {
      type: string;
      mode: number;
    };
    assert.equal(made.type, 'dir');
    assert.equal(made.mode, 0o700);
    writeFileSync(path.join(d, 'f'), 'x');
    writeFileSync(path.join(d, 'g'), 'yy');
    const list = (await files.op({ kind: 'list', path: d, limit: 1 })) as {
      entries: { name: string; size: number }[];
      truncated: boolean;
    };
    assert.deepEqual(
      list.entries.map((e) => [e.name, e.size]),
      [['f', 1]],
    );
    assert.equal(list.truncated, true);
    assert.equal(
      await codeOf(files.op({ kind: 'move', from: path.join(d, 'f'), to: path.join(d, 'g') })),
      'FILE_EXISTS',
    );
    const moved = (await files.op({
      kind: 'move',
      from: path.join(d, 'f'),
      to: path.join(d, 'g'),
      overwrite: true,
    })) as { size: number };
    assert.equal(moved.size, 1);
    assert.equal(
      await codeOf(files.op({ kind: 'remove', path: path.join(dir, 'd') })),
      'FILE_EXISTS',
    );
    assert.deepEqual(
      await files.op({ kind: 'remove', path: path.join(dir, 'd'), recursive: true }),
      {
        removed: true,
      },
    );
    assert.deepEqual(await files.op({ kind: 'remove', path: path.join(dir, 'd') }), {
      removed: false,
    });
    assert.equal(
      await codeOf(files.op({ kind: 'stat', path: path.join(dir, 'd') })),
      'FILE_NOT_FOUND',
    );
  } finally {
    await removeDir(dir);
  }
});

test('through the agent: fsWrite and fsOp replies carry the file error codes', async () => {
  const dir = await makeTempDir('mvirt-files-');
  const h = await startHarness();
  try {
    const target = path.join(dir, 'via-agent');
    const data = randomBytes(5000);
    const r = await h.request('fsWrite', {
      id: 'w1',
      transfer: 'transfer-agent',
      seq: 0,
      data,
      open: { path: target },
      final: { size: data.length, sha256: sha(data) },
    });
    assert.equal(r.ok, true);
    assert.ok(readFileSync(target).equals(data));
    const e = await h.request('fsOp', {
      id: 'o1',
      op: { kind: 'stat', path: path.join(dir, 'none') },
    });
    assert.equal(e.ok, false);
    assert.equal(e.error?.code, 'FILE_NOT_FOUND');
    const bad = await h.request('fsOp', { id: 'o2', op: { kind: 'stat', path: 'relative' } });
    assert.equal(bad.error?.code, 'BAD_MESSAGE');
  } finally {
    await h.close();
    await removeDir(dir);
  }
});
