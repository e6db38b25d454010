/**
 * A recipe's packages: Debian version order, the closure rules on a small
 * index written here (alternatives, virtual packages, versions, what is left
 * out), the closure of python3 from this machine's real apt index, pins, the
 * alternatives read from a postinst, and the bad inputs: an unknown name, a
 * closure over the size cap and a failed download (real apt-get pointed at a
 * closed proxy) are typed errors naming the fix, and a failed build leaves
 * nothing in the images folder.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { buildImage } from '../../../images/build.js';
import {
  compareVersions,
  parseIndex,
  resolveClosure,
  type DebIndex,
} from '../../../images/deb-index.js';
import { fetchPlan, loadAptIndex, planPackages } from '../../../images/deb-plan.js';
import { parseAlternatives } from '../../../images/deb-configure.js';
import { createDebianSource } from '../../../images/debian.js';
import { createProgress } from '../../../images/progress.js';
import { PROJECT_ROOT } from '../../../images/paths.js';
import { parseRecipe } from '../../../images/recipe.js';
import { standinAgent, testRecipe } from '../../../harness/image-qemu.js';

const stanza = (f: Record<string, string>): string =>
  Object.entries({ Architecture: 'amd64', Version: '1.0', 'Installed-Size': '100', ...f })
    .map(([k, v]) => `${k}: ${v}`)
    .join('\n');

const INDEX = [
  stanza({
    Package: 'app',
    'Pre-Depends': 'libc',
    Depends: 'shell | bash, mta, libz (>= 2.0)',
    Recommends: 'docs',
  }),
  stanza({ Package: 'libc', Version: '2.36-9' }),
  stanza({ Package: 'bash', Depends: 'libc (>= 2.30)' }),
  stanza({ Package: 'dash', Provides: 'shell', Depends: 'libc' }),
  stanza({ Package: 'exim', Provides: 'mta' }),
  stanza({ Package: 'postfix', Provides: 'mta' }),
  stanza({ Package: 'libz', Version: '1:1.2', Depends: 'libc' }),
  stanza({ Package: 'docs', 'Installed-Size': '999999' }),
  stanza({ Package: 'old', Depends: 'libc (<< 2.0)' }),
  stanza({ Package: 'i386only', Architecture: 'i386' }),
  stanza({ Package: 'uses-app', Depends: 'app' }),
].join('\n\n');

/** This machine's apt index, read once for the file (1.2 s idle). */
let realIndex: Promise<DebIndex> | undefined;
const aptIndex = (): Promise<DebIndex> => (realIndex ??= loadAptIndex());

const rejectsWith = (code: string, re: RegExp) => (e: unknown) =>
  e instanceof MvirtError && e.code === code && re.test(e.message);

describe('Debian version order (dpkg --compare-versions)', () => {
  test('epochs, revisions, tildes and digits compare as dpkg does', () => {
    const lt: [string, string][] = [
      ['1.0~rc1', '1.0'],
      ['1.0', '1.0+deb12u1'],
      ['2.36-9+deb12u4', '2.36-9+deb12u14'],
      ['9.9', '1:0.1'],
      ['1.2-1', '1.10-1'],
      ['1.0a', '1.0b'],
      ['1.0', '1.0-1'],
    ];
    for (const [a, b] of lt) {
      assert.ok(compareVersions(a, b) < 0, `${a} < ${b}`);
      assert.ok(compareVersions(b, a) > 0, `${b} > ${a}`);
    }
    assert.equal(compareVersions('1:2.0-3', '1:2.0-3'), 0);
  });
});

describe('dependency closure', () => {
  const index = parseIndex(INDEX);

  test('Depends and Pre-Depends, the first satisfiable alternative, a virtual package by its provider', () => {
    const c = resolveClosure(index, ['app']);
    // shell → dash (first alternative, virtual, one provider); mta → exim (first provider by name);
    // libz 1:1.2 satisfies (>= 2.0) by its epoch; Recommends (docs) is not followed.
    assert.deepEqual(
      c.packages.map((p) => p.name),
      ['app', 'dash', 'exim', 'libc', 'libz'],
    );
    assert.equal(c.why.get('dash'), 'app');
    assert.equal(c.installedKiB, 500);
  });

  test('an alternative already chosen is kept', () => {
    const c = resolveClosure(index, ['bash', 'app']);
    assert.ok(!c.packages.some((p) => p.name === 'dash'));
  });

  test('unknown and ambiguous names are RECIPE_INVALID, naming the fix', () => {
    assert.throws(
      () => resolveClosure(index, ['bsh']),
      rejectsWith('RECIPE_INVALID', /"bsh" is not in the apt index \(did you mean .*bash.*\)/),
    );
    assert.throws(
      () => resolveClosure(index, ['mta']),
      rejectsWith(
        'RECIPE_INVALID',
        /"mta" is a virtual package provided by exim, postfix: name one/,
      ),
    );
    assert.throws(
      () => resolveClosure(index, ['i386only']),
      rejectsWith('RECIPE_INVALID', /"i386only" is not in the apt index/),
    );
  });

  test('a dependency the index cannot satisfy names the chain', () => {
    assert.throws(
      () => resolveClosure(index, ['old']),
      rejectsWith('BUILD_FAILED', /old needs libc \(<< 2\.0\), which the apt index cannot satisfy/),
    );
    assert.throws(
      () =>
        resolveClosure(
          parseIndex(`${INDEX}\n\n${stanza({ Package: 'top', Depends: 'uses-app, nothere' })}`),
          ['top'],
        ),
      rejectsWith('BUILD_FAILED', /top needs nothere/),
    );
  });

  test('pins: kept while they satisfy the closure, else the index version with a warning', () => {
    const progress = createProgress(1, () => {});
    const pin = (version: string) => ({ version, sha256: 'a'.repeat(64) });
    const p = planPackages(
      parseIndex(`${INDEX}\n\n${stanza({ Package: 'busybox-static' })}`),
      ['app'],
      { libc: pin('2.35-1'), libz: pin('1.9') },
      10,
      progress,
    );
    assert.equal(p.debs[0]?.name, 'busybox-static', 'busybox first');
    const libc = p.debs.find((d) => d.name === 'libc');
    assert.deepEqual([libc?.version, libc?.source], ['2.35-1', 'pin']);
    const libz = p.debs.find((d) => d.name === 'libz');
    assert.deepEqual([libz?.version, libz?.source], ['1:1.2', 'index']);
    assert.match(progress.warnings.join('\n'), /libz 1\.9 \(pinned\) does not satisfy >= 2\.0/);
  });

  test('a closure over maxPackagesMiB is IMAGE_TOO_LARGE, naming the largest package and why', () => {
    const big = parseIndex(
      `${INDEX}\n\n${stanza({ Package: 'busybox-static' })}\n\n${stanza({ Package: 'huge', Depends: 'docs' })}`,
    );
    assert.throws(
      () => planPackages(big, ['huge'], {}, 100),
      rejectsWith(
        'IMAGE_TOO_LARGE',
        /over the recipe's maxPackagesMiB 100: .*largest: docs 977 MiB \(for huge\)/,
      ),
    );
  });

  test("python3 from this machine's apt index: the interpreter and stdlib, not the Recommends", async () => {
    const c = resolveClosure(await aptIndex(), ['python3']);
    const names = new Set(c.packages.map((p) => p.name));
    for (const n of ['python3', 'python3-minimal', 'libpython3-stdlib', 'libc6', 'zlib1g'])
      assert.ok(names.has(n), `${n} in the closure`);
    assert.ok([...names].some((n) => /^libpython3\.\d+-stdlib$/.test(n)));
    assert.ok(!names.has('python3-pip') && !names.has('ca-certificates'), 'Recommends left out');
    assert.ok(c.packages.length < 80, `${c.packages.length} packages`);
    assert.ok(
      c.packages.every((p) => /^[0-9a-f]{64}$/.test(p.sha256)),
      'every package has a digest',
    );
  });
});

describe('the shipped recipes', () => {
  test('python.json and build.json resolve under their caps, with what their names promise', async () => {
    for (const [file, must] of [
      ['python.json', ['python3', 'libpython3-stdlib']],
      [
        'build.json',
        ['make', 'gcc', 'cpp', 'binutils', 'libc6-dev', 'git', 'curl', 'ca-certificates'],
      ],
    ] as const) {
      const file_ = path.join(PROJECT_ROOT, 'images/recipes', file);
      // parseRecipe, not loadRecipe: the agent need not be built for this.
      const r = parseRecipe(JSON.parse(await readFile(file_, 'utf8')), file_);
      const plan = planPackages(await aptIndex(), r.packages, {}, r.maxPackagesMiB);
      const names = new Set(plan.debs.map((d) => d.name));
      for (const n of must) assert.ok(names.has(n), `${file}: ${n}`);
      assert.equal(r.rootfs.level, 3, `${file}: zstd level 3 (55 s → 2 s of squashfs for build)`);
      // The µOS part is the default image's: the same kernel, modules and arguments.
      const def = parseRecipe(
        JSON.parse(await readFile(path.join(PROJECT_ROOT, 'images/recipes/default.json'), 'utf8')),
      );
      assert.deepEqual(
        [r.kernel, r.modules, r.cmdline, r.machine],
        [def.kernel, def.modules, def.cmdline, def.machine],
        `${file}: as images/recipes/default.json`,
      );
    }
  });
});

describe('maintainer scripts are read, not run', () => {
  test("update-alternatives --install lines, continuations and comments as gcc's postinst has them", () => {
    const script = [
      '#!/bin/sh',
      'set -e',
      'update-alternatives --quiet \\',
      '    --install /usr/bin/cc cc /usr/bin/gcc 20 \\',
      '    #--slave /usr/share/man/man1/cc.1.gz cc.1.gz /usr/share/man/man1/gcc.1.gz',
      '',
      'update-alternatives --install /usr/bin/c99 c99 /usr/bin/c99-gcc 20 --slave a b c',
      'update-alternatives --install "$LINK" x /usr/bin/x 10',
      'update-alternatives --remove rename /usr/bin/prename',
    ].join('\n');
    assert.deepEqual(parseAlternatives(script, 'gcc'), [
      { link: '/usr/bin/cc', name: 'cc', path: '/usr/bin/gcc', priority: 20, pkg: 'gcc' },
      { link: '/usr/bin/c99', name: 'c99', path: '/usr/bin/c99-gcc', priority: 20, pkg: 'gcc' },
    ]);
  });
});

describe('bad input leaves nothing behind', () => {
  let dir = '';
  let agent: Awaited<ReturnType<typeof standinAgent>>;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mvirt-debs-'));
    agent = await standinAgent();
  });
  after(async () => {
    await agent.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  test('a download that fails is DOWNLOAD_FAILED naming the package; the cache keeps no partial file', async () => {
    const conf = path.join(dir, 'apt.conf');
    // A proxy on a closed port: apt-get really tries and fails.
    await writeFile(conf, 'Acquire::http::Proxy "http://127.0.0.1:9/";\nAcquire::Retries "0";\n');
    const env = { ...process.env, APT_CONFIG: conf };
    const cache = path.join(dir, 'cache');
    const progress = createProgress(1, () => {});
    const plan = planPackages(await aptIndex(), ['hello'], {}, 100);
    await assert.rejects(
      fetchPlan(plan, {
        cacheDir: cache,
        debian: createDebianSource(cache, progress),
        pins: {},
        progress,
        env,
      }),
      rejectsWith('DOWNLOAD_FAILED', /cannot download .*hello .*with apt-get.*check the network/s),
    );
    assert.deepEqual(await readdir(path.join(cache, 'debs', 'sha256')), []);
  });

  test('an unknown package or a closure over the cap: a typed error and no image folder', async () => {
    const data = path.join(dir, 'data');
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [
        { packages: ['pyhton3'] },
        'RECIPE_INVALID',
        /"pyhton3" is not in the apt index \(did you mean python3/,
      ],
      [{ packages: ['python3'], maxPackagesMiB: 8 }, 'IMAGE_TOO_LARGE', /maxPackagesMiB 8/],
    ];
    for (const [over, code, re] of cases) {
      const recipe = await testRecipe(agent.dir, agent.agent, over);
      await assert.rejects(
        buildImage({ recipe, dataDir: data, cacheDir: path.join(dir, 'cache'), log: () => {} }),
        rejectsWith(code, re),
      );
    }
    assert.ok(!existsSync(path.join(data, 'images')), 'nothing written to the images folder');
    assert.deepEqual(
      (await readdir(path.join(dir, 'cache'))).filter((f) => f !== 'debs'),
      [],
      'no work folder left in the cache',
    );
  });
});
