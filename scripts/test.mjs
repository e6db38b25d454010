// `npm test`: build what the tests run (host bundles, the agent executable, the
// default µOS image, all cached), then every test file in one node:test run,
// while the custom microVM kernel builds in the background (cached too); the
// one file that boots that kernel runs last, in a second run of its own.
// `npm test -- unit` runs unit tests only.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const which = process.argv[2] ?? 'all';

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, env: process.env });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function find(dir) {
  const out = [];
  let entries = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries.sort()) {
    const p = path.join(dir, e);
    if (statSync(p).isDirectory()) out.push(...find(p));
    else if (e.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const files = [...find(path.join(root, 'test/unit'))];
/** Boots the kernel of kernel-config/: runs after that kernel is built. */
const KERNEL_TEST = path.join(root, 'test/integration/image-custom-kernel.test.ts');
let kernel = null;
if (which !== 'unit') {
  run(process.execPath, ['scripts/build.mjs']);
  // The custom microVM kernel that test/integration/image-custom-kernel.test.ts
  // boots. kernel-config/build.sh caches it once per machine, outside the clone
  // (~/.cache/mvirt/kernel/<key>, keyed by the fragments and the source
  // version); a cached key costs nothing. Only the first run on a machine (or
  // after a fragment changes) pays the build: 699 s on 2 cores at nice 19
  // beside a full test run (1,155 CPU-seconds, 2026-12-06). That was 12 of a
  // fresh CI machine's 45 minutes when it ran before the tests; it now builds
  // in the background at the lowest priority while every other test file
  // runs (most of them wait on guests and events, not on both cores), and
  // only the custom-kernel file waits for it, in a second run at the end.
  kernel = startKernelBuild();
  run(process.execPath, [
    'bin/mvirt.js',
    'image',
    'build',
    'images/recipes/default.json',
    '--data-dir',
    'test-output/data',
  ]);
  files.push(...find(path.join(root, 'test/integration')).filter((f) => f !== KERNEL_TEST));
}

// One file at a time: integration tests boot real VMs under TCG on 2 cores.
const testArgs = (list) => [
  '--import',
  'tsx',
  '--test',
  '--test-concurrency=1',
  // A file that never ends (a handle left open, a wait on something that
  // never comes) fails after this instead of stalling CI until its limit (the
  // longest file took under 2 min in a full run on 2 cores, 2026-12).
  '--test-timeout=600000',
  '--test-reporter=spec',
  ...list.map((f) => path.relative(root, f)),
];
const main = spawnSync(process.execPath, testArgs(files), { stdio: 'inherit', cwd: root });
let failed = main.status !== 0;
if (kernel) {
  const code = await kernel.done;
  if (code !== 0) {
    console.error(`kernel: build failed (exit ${code}); the end of ${kernel.log}:`);
    console.error(readFileSync(kernel.log, 'utf8').split('\n').slice(-30).join('\n'));
    process.exit(1);
  }
  // build.sh's own last words: `kernel: cached …` or `kernel: built … in Ns -> …`.
  const said = readFileSync(kernel.log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('kernel: '));
  console.log(`${said.at(-1) ?? 'kernel: ready'} (beside the tests); its test follows`);
  const k = spawnSync(process.execPath, testArgs([KERNEL_TEST]), { stdio: 'inherit', cwd: root });
  failed ||= k.status !== 0;
}
process.exit(failed ? 1 : 0);

/** kernel-config/build.sh in the background, its progress in a log file. */
function startKernelBuild() {
  const log = path.join(root, 'test-output/kernel-build.log');
  mkdirSync(path.dirname(log), { recursive: true });
  const out = openSync(log, 'w');
  const child = spawn('nice', ['-n', '19', 'bash', 'kernel-config/build.sh'], {
    cwd: root,
    stdio: ['ignore', out, out],
  });
  closeSync(out);
  console.log(`kernel: kernel-config/build.sh runs in the background (progress: ${log})`);
  const done = new Promise((resolve) => {
    child.on('error', () => resolve(127));
    child.on('close', (code) => resolve(code ?? 1));
  });
  return { log, done };
}
