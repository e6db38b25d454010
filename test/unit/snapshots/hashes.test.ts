/**
 * A saved state's files hashed (sha256File, hashFiles) and checked
 * (checkHashes): a changed file caught and named, a verified one not hashed
 * again unless it changed, a file that changed while hashed not remembered.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs, { utimesSync } from 'node:fs';
import { mkdir, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkHashes, hashFiles, sha256File } from '../../../host/snapshots/files.js';
import type { SavedState } from '../../../host/hypervisors/types.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { refused } from '../../support/volumes.js';

const STATE_BYTES = 4096;
const RAM_BYTES = 3 * 4096;
const content = {
  'state.bin': Buffer.alloc(STATE_BYTES, 7),
  'ram.bin': Buffer.alloc(RAM_BYTES, 9),
};
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const hex = (c: string) => c.repeat(64);
let dir: string;
before(async () => {
  dir = await makeTempDir('mvirt-snaphash-');
});
after(() => removeDir(dir));

/** A saved state of both files (what hashFiles reads the names from). */
const manifest = (_id: string): { state: SavedState } => ({
  state: {
    backend: 'qemu',
    version: '9.2.0',
    machine: 'pc-i440fx-9.2',
    memoryMiB: 256,
    vcpus: 1,
    devices: 'd'.repeat(64),
    ram: 'file',
    files: { 'state.bin': STATE_BYTES, 'ram.bin': RAM_BYTES },
    bytes: STATE_BYTES + RAM_BYTES,
  },
});

test('sha256File streams a file to its sha256', async () => {
  const f = path.join(dir, 'blob');
  const data = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  await writeFile(f, data);
  assert.equal(await sha256File(f), createHash('sha256').update(data).digest('hex'));
  await writeFile(f, '');
  assert.equal(
    await sha256File(f),
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  );
  await assert.rejects(sha256File(path.join(dir, 'nope')), { code: 'ENOENT' });
});

/**
 * The files sha256File opens while `fn` runs (files.ts reads them through
 * node:fs's createReadStream; syncBuiltinESMExports lets its import see the
 * wrapper). `onOpen` runs as each is opened.
 */
async function opened(
  fn: () => Promise<unknown>,
  onOpen?: (file: string) => void,
): Promise<string[]> {
  const real = fs.createReadStream;
  const seen: string[] = [];
  fs.createReadStream = ((file: fs.PathLike, o?: Parameters<typeof real>[1]) => {
    seen.push(String(file));
    onOpen?.(String(file));
    return real(file, o);
  }) as typeof real;
  syncBuiltinESMExports();
  try {
    await fn();
  } finally {
    fs.createReadStream = real;
    syncBuiltinESMExports();
  }
  return seen.map((f) => path.basename(f)).sort();
}

describe("a saved state's files: hashFiles and checkHashes", () => {
  /** A folder of its own (checkHashes remembers files by path) with state.bin and ram.bin. */
  let k = 0;
  async function folder(): Promise<string> {
    const d = path.join(dir, `state-${++k}`);
    await mkdir(d);
    for (const [name, data] of Object.entries(content)) await writeFile(path.join(d, name), data);
    return d;
  }
  const hashes = () => ({
    'state.bin': sha(content['state.bin']),
    'ram.bin': sha(content['ram.bin']),
  });
  const saved = () => manifest('snap-000000000000').state;

  test('hashFiles: the sha256 of each file the state lists, by name, and of no other', async () => {
    const d = await folder();
    await writeFile(path.join(d, 'other.bin'), 'not part of it');
    assert.deepEqual(await hashFiles(d, saved()), hashes());
    const stream = { ...saved(), ram: 'stream' as const, files: { 'state.bin': STATE_BYTES } };
    assert.deepEqual(await hashFiles(d, stream), { 'state.bin': sha(content['state.bin']) });
    assert.deepEqual(await hashFiles(d, { ...saved(), files: {} }), {});
    await rm(path.join(d, 'ram.bin'));
    await assert.rejects(hashFiles(d, saved()), { code: 'ENOENT' });
  });

  test('checkHashes resolves when every file has its sha256', async () => {
    const d = await folder();
    await checkHashes(d, hashes(), 'snapshot warm');
    await checkHashes(d, {}, 'snapshot warm');
  });

  test('one changed file among two: SNAPSHOT_INVALID naming it, with both sums', async () => {
    for (const name of ['state.bin', 'ram.bin'] as const) {
      const d = await folder();
      const damaged = Buffer.from(content[name]);
      damaged[0] = 0xff; // the same size, one byte changed
      await writeFile(path.join(d, name), damaged);
      const e = await refused(checkHashes(d, hashes(), 'VM web-1'), 'SNAPSHOT_INVALID');
      assert.equal(
        e.message,
        `VM web-1: the sha256 of ${name} is ${sha(damaged)}, the record says ${hashes()[name]}; it was changed or damaged`,
      );
      // The other file alone still checks.
      const other = name === 'state.bin' ? 'ram.bin' : 'state.bin';
      await checkHashes(d, { [other]: hashes()[other] }, 'VM web-1');
    }
  });

  test('a verified file is not hashed again; a changed one, or another record, is', async () => {
    const d = await folder();
    const ram = path.join(d, 'ram.bin');
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), ['ram.bin', 'state.bin']);
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), [], 'both remembered');

    // Another record for the same file is not taken from the memory of this one.
    const wrong = { ...hashes(), 'ram.bin': hex('0') };
    let seen = await opened(() => refused(checkHashes(d, wrong, 'x'), 'SNAPSHOT_INVALID'));
    assert.deepEqual(seen, ['ram.bin']);
    // … nor does a failed check make it remembered.
    seen = await opened(() => refused(checkHashes(d, wrong, 'x'), 'SNAPSHOT_INVALID'));
    assert.deepEqual(seen, ['ram.bin']);
    assert.deepEqual(
      await opened(() => checkHashes(d, hashes(), 'x')),
      [],
      'the right record still is',
    );

    // Touched (mtime): hashed again, and remembered again.
    await utimes(ram, new Date('2020-01-01'), new Date('2020-01-01'));
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), ['ram.bin']);
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), []);

    // Another file of the same size in its place (another inode): hashed, and caught.
    const replacement = Buffer.alloc(RAM_BYTES, 1);
    await writeFile(`${ram}.new`, replacement);
    await rename(`${ram}.new`, ram);
    let e = await refused(checkHashes(d, hashes(), 'x'), 'SNAPSHOT_INVALID');
    assert.match(e.message, new RegExp(`sha256 of ram\\.bin is ${sha(replacement)}`));

    // Of another size: caught the same way.
    await writeFile(ram, content['ram.bin']);
    await checkHashes(d, hashes(), 'x');
    await writeFile(ram, Buffer.concat([content['ram.bin'], Buffer.from('!')]));
    e = await refused(checkHashes(d, hashes(), 'x'), 'SNAPSHOT_INVALID');
    assert.match(e.message, /sha256 of ram\.bin is/);
  });

  test('a file that changed while it was being hashed is not remembered', async () => {
    const d = await folder();
    const ram = path.join(d, 'ram.bin');
    // Its mtime moves once it is opened (its bytes stay): the check passes, but proves nothing later.
    const touch = (f: string) => {
      if (f === ram) utimesSync(ram, new Date('2021-01-01'), new Date('2021-01-01'));
    };
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x'), touch), [
      'ram.bin',
      'state.bin',
    ]);
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), ['ram.bin']);
    assert.deepEqual(await opened(() => checkHashes(d, hashes(), 'x')), []);
  });
});
