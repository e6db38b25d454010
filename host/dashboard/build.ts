/**
 * The dashboard bundle: host/dashboard/main.ts (with mqtt.js, uPlot, zod and
 * the protocol) and its CSS, bundled by esbuild for browsers, no CDN. `npm run
 * build` writes dist/dashboard/; mvirtd run from source builds it in memory at
 * start (assets.ts), so a change shows on the next daemon start.
 *
 *     node --import tsx host/dashboard/build.ts [OUTDIR]
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Files by URL path, as the HTTP listener serves them. */
export interface DashboardFiles {
  '/': string;
  '/assets/dashboard.js': Uint8Array;
  '/assets/dashboard.css': Uint8Array;
}

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
    target: ['chrome110', 'firefox110', 'safari16'],
    minify: true,
    legalComments: 'none',
    logLevel: 'silent',
  });
  const pick = (ext: string): Uint8Array => {
    const f = r.outputFiles.find((o) => o.path.endsWith(ext));
    if (!f) throw new Error(`the dashboard build produced no ${ext}`);
    return f.contents;
  };
  return {
    '/': await readFile(path.join(HERE, 'index.html'), 'utf8'),
    '/assets/dashboard.js': pick('.js'),
    '/assets/dashboard.css': pick('.css'),
  };
}

export const DIST_FILES: Record<keyof DashboardFiles, string> = {
  '/': 'index.html',
  '/assets/dashboard.js': 'dashboard.js',
  '/assets/dashboard.css': 'dashboard.css',
};

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const out = path.resolve(process.argv[2] ?? path.resolve(HERE, '../../dist/dashboard'));
  await mkdir(out, { recursive: true });
  const files = await buildDashboard();
  for (const [url, name] of Object.entries(DIST_FILES))
    await writeFile(path.join(out, name), files[url as keyof DashboardFiles]);
  process.stderr.write(`build: dashboard (${path.relative(process.cwd(), out) || out})\n`);
}
