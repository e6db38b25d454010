// `npm test`: build what the tests run (host bundles, the agent executable, the
// custom microVM kernel, the default µOS image, all cached), then every test
// file in one node:test run so the closing summary counts them all.
// `npm test -- unit` runs unit tests only.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
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
if (which !== 'unit') {
  run(process.execPath, ['scripts/build.mjs']);
  // The custom kernel that test/integration/image-custom-kernel.test.ts boots.
  // kernel-config/build.sh caches it once per machine, outside the clone
  // (~/.cache/mvirt/kernel/<key>, keyed by the fragments and the source
  // version), and prints its progress every 30 s; a cached key costs nothing.
  // Only the first run on a machine (or after a fragment changes) pays the
  // build: 699 s on 2 cores (measured 2026-12-06 at nice 19 beside a full test
  // run; 1,155 CPU-seconds), so a fresh CI machine spends about 12 min here
  // plus ~15 min of tests plus the package installs, under the 45 min CI bound;
  // every later run skips it.
  run('bash', ['kernel-config/build.sh']);
  run(process.execPath, [
    'bin/mvirt.js',
    'image',
    'build',
    'images/recipes/default.json',
    '--data-dir',
    'test-output/data',
  ]);
  files.push(...find(path.join(root, 'test/integration')));
}
// One file at a time: integration tests boot real VMs under TCG on 2 cores.
run(process.execPath, [
  '--import',
  'tsx',
  '--test',
  '--test-concurrency=1',
  // A file that never ends (a handle left open, a wait on something that
  // never comes) fails after this instead of stalling CI until its limit (the
  // longest file took under 2 min in a full run on 2 cores, 2026-12).
  '--test-timeout=600000',
  '--test-reporter=spec',
  ...files.map((f) => path.relative(root, f)),
]);
