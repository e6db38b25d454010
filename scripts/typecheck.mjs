// `npm run typecheck`: tsc over each part with its own globals, one after the
// other (tsc is single-threaded; the machines have 2 cores).
//   tsconfig.json               the Node side: host, images, tests, bench, scripts
//   protocol/tsconfig.json      the contract: Node types, no DOM
//   guest-agent/tsconfig.json   mvirt-agent: Node types, no DOM
//   host/dashboard/tsconfig.json  the page: DOM, no Node types
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const PROJECTS = [
  'tsconfig.json',
  'protocol/tsconfig.json',
  'guest-agent/tsconfig.json',
  'host/dashboard/tsconfig.json',
];

let failed = 0;
for (const p of PROJECTS) {
  const t0 = Date.now();
  const r = spawnSync(
    process.execPath,
    [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', p],
    {
      cwd: root,
      stdio: 'inherit',
    },
  );
  const s = ((Date.now() - t0) / 1000).toFixed(1);
  if (r.status === 0) console.log(`typecheck: ${p} ok (${s} s)`);
  else {
    failed++;
    console.error(`typecheck: ${p} FAILED (${s} s)`);
  }
}
process.exit(failed === 0 ? 0 : 1);
