/**
 * The pin policy of images/debian.ts, against fake apt-get/apt-cache/dpkg-deb
 * on PATH (no network): pinned copy from the cache, pinned version from the
 * archive, current version with a warning when the pin vanished, and a
 * checksum mismatch as a clear DOWNLOAD_FAILED.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { createDebianSource } from '../../../images/debian.js';
import { createProgress } from '../../../images/progress.js';

// The fake archive has only version 2.0 of "pkg"; a deb's content is its file name.
const APT_GET = `#!/bin/sh
[ "$1" = download ] || exit 1
spec=$3
case $spec in
  pkg=2.0) printf 'pkg_2.0_amd64.deb' > pkg_2.0_amd64.deb ;;
  *) echo "E: Version for '$spec' was not found" >&2; exit 100 ;;
esac
`;
const APT_CACHE = `#!/bin/sh
case "$*" in
  "show --no-all-versions pkg") echo "Package: pkg"; echo "Version: 2.0" ;;
  *) exit 100 ;;
esac
`;
const DPKG_DEB = `#!/bin/sh
# dpkg-deb -f FILE Version
basename "$2" | cut -d_ -f2
`;

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

describe('Debian pins', () => {
  let dir = '';
  let cache = '';
  const oldPath = process.env.PATH;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mvirt-apt-'));
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    await writeFile(path.join(bin, 'apt-get'), APT_GET, { mode: 0o755 });
    await writeFile(path.join(bin, 'apt-cache'), APT_CACHE, { mode: 0o755 });
    await writeFile(path.join(bin, 'dpkg-deb'), DPKG_DEB, { mode: 0o755 });
    process.env.PATH = `${bin}:${oldPath ?? ''}`;
  });
  after(async () => {
    process.env.PATH = oldPath;
    await rm(dir, { recursive: true, force: true });
  });

  const fresh = async (): Promise<{
    warnings: readonly string[];
    src: ReturnType<typeof createDebianSource>;
  }> => {
    cache = await mkdtemp(path.join(dir, 'cache-'));
    const progress = createProgress(1, () => {});
    return { warnings: progress.warnings, src: createDebianSource(cache, progress) };
  };

  test('a pinned version still in the archive is downloaded and checked', async () => {
    const { src, warnings } = await fresh();
    const d = await src.fetch('pkg', { version: '2.0', sha256: sha('pkg_2.0_amd64.deb') });
    assert.equal(d.version, '2.0');
    assert.equal(d.pinned, true);
    assert.equal(d.origin, 'archive');
    assert.deepEqual(warnings, []);
    // Second time: from the cache.
    assert.equal((await src.fetch('pkg', { version: '2.0', sha256: d.sha256 })).origin, 'cache');
  });

  test('a vanished pin uses the cached copy when there is one', async () => {
    const { src, warnings } = await fresh();
    await mkdir(path.join(cache, 'debs'), { recursive: true });
    await writeFile(path.join(cache, 'debs', 'pkg_1.0_amd64.deb'), 'old');
    const d = await src.fetch('pkg', { version: '1.0', sha256: sha('old') });
    assert.equal(d.version, '1.0');
    assert.equal(d.origin, 'cache');
    assert.equal(d.pinned, true);
    assert.deepEqual(warnings, []);
  });

  test('a vanished pin without a cached copy takes the current version and warns', async () => {
    const { src, warnings } = await fresh();
    const d = await src.fetch('pkg', { version: '1.0', sha256: sha('old') });
    assert.equal(d.version, '2.0');
    assert.equal(d.pinned, false);
    assert.equal(d.pinnedVersion, '1.0');
    assert.equal(warnings.length, 1);
    assert.match(
      warnings[0] ?? '',
      /pkg 1\.0 \(pinned\) is gone from the archive.*using the current 2\.0/,
    );
  });

  test('a checksum that does not match the pin is a clear download error', async () => {
    const { src } = await fresh();
    await assert.rejects(
      src.fetch('pkg', { version: '2.0', sha256: sha('something else') }),
      (e: unknown) =>
        e instanceof MvirtError &&
        e.code === 'DOWNLOAD_FAILED' &&
        /does not match the pin/.test(e.message),
    );
  });

  test('an unknown package names the fix', async () => {
    const { src } = await fresh();
    await assert.rejects(
      src.fetch('nope', undefined),
      (e: unknown) =>
        e instanceof MvirtError &&
        e.code === 'DOWNLOAD_FAILED' &&
        /not in the apt archive/.test(e.message),
    );
  });
});
