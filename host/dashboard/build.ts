/**
 * The dashboard bundle: host/dashboard/main.ts (with mqtt.js, uPlot, zod and
 * the protocol) and its CSS, bundled by esbuild for browsers, no CDN. `npm run
 * build` writes dist/dashboard/; mvirtd run from source builds it in memory at
 * start (assets.ts), so a change shows on the next daemon start.
 *
 *     node --import tsx host/dashboard/build.ts [OUTDIR]
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Files by URL path, as the HTTP listener serves them: `/` and `/assets/<file>`. */
export type DashboardFiles = Map<string, Uint8Array>;

export async function buildDashboard(): Promise<DashboardFiles> {
  // esbuild is a build tool: imported only when a build is asked for.
  const { build } = await import('esbuild');
  const r = await build({
    absWorkingDir: path.resolve(HERE, '../..'),
    entryPoints: { dashboard: path.join(HERE, 'main.ts') },
    outdir: 'dashboard-out',
    write: false,
    bundle: true,
    platform: 'browser',
    format: 'esm',
    // zod and the schemas load as their own chunk, off the first render's path.
    splitting: true,
    chunkNames: 'chunk-[hash]',
    target: ['chrome110', 'firefox110', 'safari16'],
    minify: true,
    legalComments: 'none',
    logLevel: 'silent',
  });
  const files: DashboardFiles = new Map([
    ['/', new Uint8Array(await readFile(path.join(HERE, 'index.html')))],
  ]);
  for (const o of r.outputFiles) files.set(`/assets/${path.basename(o.path)}`, o.contents);
  for (const want of ['/assets/dashboard.js', '/assets/dashboard.css'])
    if (!files.has(want)) throw new Error(`the dashboard build produced no ${want}`);
  return files;
}

/** The file name under dist/dashboard/ of a URL path. */
export const distName = (url: string): string => (url === '/' ? 'index.html' : path.basename(url));

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const out = path.resolve(process.argv[2] ?? path.resolve(HERE, '../../dist/dashboard'));
  await rm(out, { recursive: true, force: true }); // no stale chunks
  await mkdir(out, { recursive: true });
  const files = await buildDashboard();
  for (const [url, body] of files) await writeFile(path.join(out, distName(url)), body);
  process.stderr.write(`build: dashboard (${path.relative(process.cwd(), out) || out})\n`);
}
