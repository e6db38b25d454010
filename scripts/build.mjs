// Build everything that runs: the host programs (bundled, node_modules kept
// external), the dashboard (host/dashboard/build.ts) and the guest agent
// executable (guest-agent/build.mjs).
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const only = process.argv[2]; // 'host' | 'agent' | undefined (both)

const step = (name) => process.stderr.write(`build: ${name}\n`);

/**
 * MQTT.js and bl take Node's streams from readable-stream, a copy of them
 * (Node 18's) for browsers and old Nodes: in the CLI they are Node's own.
 */
const nodeStreams = {
  name: 'node-streams',
  setup(b) {
    b.onResolve({ filter: /^readable-stream$/ }, () => ({ path: 'node:stream', external: true }));
  },
};

/**
 * Parts of MQTT.js's graph a Node CLI never runs, put off until something
 * calls them (each stand-in loads the real package then, so nothing changes
 * but when it loads): worker-timers (a browser's keep-alive timers, with the
 * regenerator runtime), lru-cache (MQTT 5 topic aliases; it also loads
 * node:perf_hooks) and debug (off unless DEBUG is set; it loads tty and
 * supports-color). They were 8–10 ms of `mvirt vm ls` with the machine busy
 * (2-core dev machine, Node 20, each package's evaluation timed in the bundle).
 */
const LAZY = {
  'worker-timers': `
    let real;
    const load = () => (real ??= require('worker-timers'));
    for (const k of ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'])
      exports[k] = (...args) => load()[k](...args);`,
  'lru-cache': `
    let real;
    const load = () => (real ??= require('lru-cache'));
    module.exports = new Proxy({}, { get: (_, k) => load()[k], has: (_, k) => k in load() });`,
  debug: `
    const off = Object.assign(() => {}, { enabled: false, namespace: '' });
    off.extend = () => off;
    module.exports = process.env.DEBUG
      ? require('debug')
      : Object.assign(() => off, { enabled: () => false, enable() {}, disable: () => '' });`,
};
const lazyPackages = {
  name: 'lazy-packages',
  setup(b) {
    const filter = new RegExp(`^(${Object.keys(LAZY).join('|')})$`);
    b.onResolve({ filter }, (args) =>
      // The stand-in's own require is the real package, resolved where the importer would.
      args.namespace === 'lazy'
        ? undefined
        : { path: `${args.path}@${args.resolveDir}`, namespace: 'lazy' },
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy' }, (args) => {
      const at = args.path.indexOf('@');
      return { contents: LAZY[args.path.slice(0, at)], resolveDir: args.path.slice(at + 1) };
    });
  },
};

if (only !== 'agent') {
  step('mvirtd (dist/mvirtd.js)');
  await build({
    absWorkingDir: root,
    entryPoints: { mvirtd: 'host/daemon/main.ts' },
    outdir: 'dist',
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    packages: 'external',
    sourcemap: 'linked',
    logLevel: 'warning',
  });
  // The CLI starts once per command, so its start is what it costs. Its
  // packages are bundled in (MQTT.js loaded from node_modules took 50+ ms:
  // module resolution and ~60 files; zod 40 ms, bundled with only the parts
  // used 10 ms), except those with native code (cbor-x is loaded through
  // require on the first CBOR payload). Its commands and the client are
  // imported when used (host/cli/table.ts): in the bundle their modules are
  // evaluated only then.
  //
  // One CommonJS bundle, not ES module chunks: Node 20 caches compiled code
  // for scripts only (host/cli/code-cache.ts). Measured on the 2-core dev
  // machine, Node 20, bench/cli.ts (medians of 21 interleaved runs, as
  // multiples of `node -e 0` in the same run): ES module chunks (esbuild
  // splitting), no cache: `mvirt --help` 1.71×, `mvirt vm ls` 2.94×; this
  // bundle with its cache: 1.33× and 2.33× (79 and 138 ms beside 60 ms).
  step('CLI (dist/cli.cjs, started by dist/mvirt.cjs)');
  rmSync(path.join(root, 'dist/cli'), { recursive: true, force: true });
  await build({
    absWorkingDir: root,
    entryPoints: { cli: 'host/cli/main.ts' },
    outdir: 'dist',
    outExtension: { '.js': '.cjs' },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    external: ['cbor-x', 'better-sqlite3'],
    plugins: [nodeStreams, lazyPackages],
    // import.meta.url where ES modules read it (images/paths.ts, client-codec.ts).
    define: { 'import.meta.url': '__mvirtModuleUrl' },
    // "use strict" first: the banner comes before esbuild's own, which then
    // no longer makes the bundle strict.
    banner: {
      js: '"use strict";\nconst __mvirtModuleUrl = require(\'node:url\').pathToFileURL(__filename).href;',
    },
    sourcemap: 'linked',
    logLevel: 'warning',
  });
  // All ASCII, which the loader reads as Latin-1 (code-cache.ts): esbuild
  // escapes non-ASCII text in code but leaves comments as they are, whose
  // characters become \uXXXX (valid in any literal, were one left).
  const cli = path.join(root, 'dist/cli.cjs');
  const cliText = readFileSync(cli, 'utf8').replace(/[^\0-\x7f]/gu, (c) =>
    [...Array(c.length).keys()]
      .map((i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`)
      .join(''),
  );
  writeFileSync(cli, cliText);
  // Tags the code cache (host/cli/code-cache.ts cacheHead): a cache is used for this text only.
  const cliSha256 = createHash('sha256').update(cliText).digest('hex');
  // What bin/mvirt.js requires: CommonJS too (bin/package.json), so that Node
  // starts the CLI without its ES module loader, which an ES module entry
  // loads first (with node:fs/promises, readline and the file watchers it
  // takes along): an empty .mjs took 9 ms more CPU to run than an empty .cjs
  // (medians of 40 interleaved runs, 2-core dev machine under load, Node 20).
  rmSync(path.join(root, 'dist/mvirt.js'), { force: true });
  await build({
    absWorkingDir: root,
    entryPoints: { mvirt: 'host/cli/start.ts' },
    outdir: 'dist',
    outExtension: { '.js': '.cjs' },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    define: {
      'import.meta.url': '__mvirtModuleUrl',
      MVIRT_CLI_SHA256: JSON.stringify(cliSha256),
    },
    banner: {
      js: '"use strict";\nconst __mvirtModuleUrl = require(\'node:url\').pathToFileURL(__filename).href;',
    },
    logLevel: 'warning',
  });
}
if (only !== 'agent') {
  // The dashboard that mvirtd --http serves (a bundled mvirtd reads dist/dashboard/).
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(root, 'host/dashboard/build.ts'),
      path.join(root, 'dist/dashboard'),
    ],
    { stdio: 'inherit', cwd: root },
  );
  if (r.status !== 0) process.exit(r.status ?? 1);
}
if (only !== 'host') {
  step('guest agent (dist/agent/mvirt-agent)');
  const r = spawnSync(process.execPath, [path.join(root, 'guest-agent/build.mjs')], {
    stdio: 'inherit',
    cwd: root,
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
