/**
 * The CLI's code cache (host/cli/code-cache.ts): written after a run, used by
 * the next, and never trusted blindly: a corrupt, stale, foreign or
 * unwritable cache costs the cache, never the run. Each run is its own
 * process, as V8 would otherwise answer from its in-memory compilation cache.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isAscii } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt } from '../../../harness/build.js';
import { REPO } from '../../../harness/paths.js';
import { cacheFileFor, cacheSupported } from '../../../host/cli/code-cache.js';

const LOADER = path.join(REPO, 'host/cli/code-cache.ts');

/** Run `bundle` through runCached in a fresh Node; what it printed and what became of the cache. */
function run(bundle: string, cacheFile: string, tag = ''): { cache: string; out: string } {
  const code =
    `import { runCached } from ${JSON.stringify(LOADER)};\n` +
    `const r = runCached(${JSON.stringify(bundle)}, ${JSON.stringify(cacheFile)}, ${JSON.stringify(tag)});\n` +
    `process.stderr.write('cache=' + r.cache + '\\n');`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: REPO,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return { cache: /cache=(\w+)/.exec(r.stderr)?.[1] ?? '?', out: r.stdout };
}

/** A bundle with enough code that V8 has something to cache, printing `answer`. */
const bundleText = (answer: number): string =>
  Array.from({ length: 200 }, (_, i) => `function f${i}(x) { return x * ${i} + ${answer}; }`).join(
    '\n',
  ) + `\nprocess.stdout.write(String(f0(0)) + ' ' + typeof require + ' ' + __filename);\n`;

describe('code cache', () => {
  let dir: string;
  let bundle: string;
  let cache: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-code-cache-'));
    bundle = path.join(dir, 'bundle.cjs');
    cache = path.join(dir, 'cache', 'code', 'bundle.bin');
    writeFileSync(bundle, bundleText(42));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is written after a run, for this user only, and used by the next', () => {
    assert.deepEqual(run(bundle, cache), { cache: 'missing', out: `42 function ${bundle}` });
    assert.equal(statSync(cache).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(cache)).mode & 0o777, 0o700);
    assert.deepEqual(run(bundle, cache), { cache: 'hit', out: `42 function ${bundle}` });
  });

  it('a corrupt cache is rejected, the run goes on, and the cache is rewritten', () => {
    run(bundle, cache);
    const good = readFileSync(cache);
    for (const corrupt of [
      (b: Buffer) => void (b[b.length >> 1]! ^= 0xff),
      (b: Buffer) => void b.fill(0, b.length - 64),
    ]) {
      const b = Buffer.from(good);
      corrupt(b);
      writeFileSync(cache, b, { mode: 0o600 });
      assert.deepEqual(run(bundle, cache), { cache: 'rejected', out: `42 function ${bundle}` });
      assert.notDeepEqual(readFileSync(cache), b, 'rewritten');
      assert.equal(run(bundle, cache).cache, 'hit');
    }
    for (const junk of [good.subarray(0, good.length >> 1), Buffer.from('not a cache')]) {
      writeFileSync(cache, junk, { mode: 0o600 });
      assert.equal(run(bundle, cache).cache, 'rejected');
      assert.equal(run(bundle, cache).cache, 'hit');
    }
  });

  it('a stale cache (the bundle was rebuilt) is rejected and replaced', () => {
    run(bundle, cache);
    writeFileSync(bundle, bundleText(7));
    assert.deepEqual(run(bundle, cache), { cache: 'rejected', out: `7 function ${bundle}` });
    assert.equal(run(bundle, cache).cache, 'hit');
  });

  it('a rebuild of the same length is told by its tag, which V8 alone would not see', () => {
    writeFileSync(bundle, bundleText(42));
    run(bundle, cache, 'build-1');
    assert.equal(run(bundle, cache, 'build-1').cache, 'hit');
    writeFileSync(bundle, bundleText(43)); // the same length, in the same file
    assert.deepEqual(run(bundle, cache, 'build-2'), {
      cache: 'rejected',
      out: `43 function ${bundle}`,
    });
    assert.deepEqual(run(bundle, cache, 'build-2'), { cache: 'hit', out: `43 function ${bundle}` });
    writeFileSync(bundle, bundleText(7)); // as the tests after this one have it
  });

  it('a cache others could have written is not used; one that cannot be written costs nothing', () => {
    run(bundle, cache);
    chmodSync(cache, 0o666);
    assert.equal(run(bundle, cache).cache, 'missing');
    // The cache folder's place is a file: nothing can be written there.
    const blocked = path.join(bundle, 'code', 'x.bin');
    assert.deepEqual(run(bundle, blocked), { cache: 'missing', out: `7 function ${bundle}` });
    assert.equal(existsSync(blocked), false);
  });

  it('is off where V8 might not checksum caches', () => {
    assert.equal(cacheSupported('11.3.244.8-node.38'), true);
    assert.equal(cacheSupported('13.6.233.10'), true);
    assert.equal(cacheSupported('9.4.146'), false);
    assert.equal(cacheSupported('14.0.1'), false);
  });

  it('lives in MVIRT_CACHE_DIR, XDG_CACHE_HOME or ~/.cache, per bundle file', () => {
    const f = cacheFileFor(bundle, { XDG_CACHE_HOME: '/x' }, '/home/u', 'vm');
    assert.match(f!, /^\/x\/mvirt\/code\/cli-\d+-\d+-v8-.+-vm\.bin$/);
    assert.match(cacheFileFor(bundle, { MVIRT_CACHE_DIR: '/c' }, '/home/u')!, /^\/c\/code\//);
    assert.match(cacheFileFor(bundle, {}, '/home/u')!, /^\/home\/u\/\.cache\/mvirt\/code\//);
    assert.equal(cacheFileFor(bundle, {}, ''), null, 'no home');
    assert.equal(cacheFileFor(path.join(dir, 'nope.cjs'), {}, '/home/u'), null, 'no bundle');
  });
});

describe('mvirt with its code cache', () => {
  it('works with a corrupt cache, and writes a good one', () => {
    ensureBuilt();
    const home = mkdtempSync(path.join(os.tmpdir(), 'mvirt-cli-cache-'));
    try {
      const env = { ...process.env, MVIRT_CACHE_DIR: home };
      const mvirt = (args: string[]) =>
        spawnSync(process.execPath, [path.join(REPO, 'bin/mvirt.js'), ...args], {
          env,
          encoding: 'utf8',
        });
      // ASCII, read as Latin-1 (code-cache.ts readSource).
      assert.ok(isAscii(readFileSync(path.join(REPO, 'dist/cli.cjs'))));
      let r = mvirt(['--help']);
      assert.equal(r.status, 0, r.stderr);
      const file = cacheFileFor(path.join(REPO, 'dist/cli.cjs'), env, undefined, 'main')!;
      const good = readFileSync(file);
      const bad = Buffer.from(good);
      for (let i = 64; i < bad.length; i += 997) bad[i]! ^= 0x5a;
      writeFileSync(file, bad, { mode: 0o600 });
      r = mvirt(['--json', '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^Usage: mvirt /);
      assert.notDeepEqual(readFileSync(file), bad, 'rewritten');
      // Each command word has a cache of its own.
      r = mvirt(['vm', 'ls', '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^Usage: mvirt vm ls/);
      assert.ok(existsSync(cacheFileFor(path.join(REPO, 'dist/cli.cjs'), env, undefined, 'vm')!));
      r = mvirt(['nope']);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /no command 'nope'/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
