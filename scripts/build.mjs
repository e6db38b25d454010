// Build everything that runs: the host programs (bundled, node_modules kept
// external), the dashboard (host/dashboard/build.ts) and the guest agent
// executable (guest-agent/build.mjs).
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const only = process.argv[2]; // 'host' | 'agent' | undefined (both)

const step = (name) => process.stderr.write(`build: ${name}\n`);

if (only !== 'agent') {
  step('host programs (dist/mvirtd.js, dist/mvirt.js)');
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
  // The CLI starts once per command, so its start is what it costs: split in
  // chunks (dist/cli/), each command module and the client loaded when used
  // (host/cli/table.ts), and its packages bundled in. Measured on the 2-core
  // dev machine (Node 20): MQTT.js's client loaded from node_modules took 50+ ms
  // (module resolution and ~60 files), bundled 15–20 ms; zod 40 ms, bundled
  // with only the parts used 10 ms. Packages with native code stay outside
  // (cbor-x is loaded through require on the first CBOR payload).
  rmSync(path.join(root, 'dist/cli'), { recursive: true, force: true });
  await build({
    absWorkingDir: root,
    entryPoints: { mvirt: 'host/cli/main.ts' },
    outdir: 'dist',
    chunkNames: 'cli/[name]-[hash]',
    bundle: true,
    splitting: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    external: ['cbor-x', 'better-sqlite3'],
    // Bundled CommonJS packages (MQTT.js) require Node's modules; ES module
    // chunks have no `require` of their own.
    banner: {
      js: "import { createRequire as __mvirtRequire } from 'node:module'; const require = __mvirtRequire(import.meta.url);",
    },
    sourcemap: 'linked',
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
