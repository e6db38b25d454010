// Build everything that runs: the host programs (bundled, node_modules kept
// external), the dashboard (host/dashboard/build.ts) and the guest agent
// executable (guest-agent/build.mjs).
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const only = process.argv[2]; // 'host' | 'agent' | undefined (both)

const step = (name) => process.stderr.write(`build: ${name}\n`);

if (only !== 'agent') {
  step('host programs (dist/mvirtd.js, dist/mvirt.js)');
  await build({
    absWorkingDir: root,
    entryPoints: { mvirtd: 'host/daemon/main.ts', mvirt: 'host/cli/main.ts' },
    outdir: 'dist',
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    packages: 'external',
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
