/**
 * Where the running daemon gets its dashboard: next to the bundled mvirtd
 * (dist/dashboard/, written by `npm run build`), or, when mvirtd runs from its
 * TypeScript source, an in-memory esbuild build of the current source, so a
 * stale dist/ never shadows an edit.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { Assets, Asset } from '../http/server.js';
import { DIST_FILES, buildDashboard, type DashboardFiles } from './build.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

function toAssets(files: DashboardFiles): Assets {
  const out = new Map<string, Asset>();
  for (const [url, name] of Object.entries(DIST_FILES)) {
    const raw = files[url as keyof DashboardFiles];
    const body = Buffer.from(raw);
    out.set(url, {
      contentType: TYPES[path.extname(name)] ?? 'application/octet-stream',
      body,
      gzip: gzipSync(body, { level: 9 }),
    });
  }
  return out;
}

/** Load (or build) once; the promise is shared by every request. */
export function dashboardAssets(moduleUrl: string = import.meta.url): () => Promise<Assets> {
  let loading: Promise<Assets> | null = null;
  const load = async (): Promise<Assets> => {
    const file = fileURLToPath(moduleUrl);
    if (file.endsWith('.ts')) return toAssets(await buildDashboard());
    // Bundled: this code is dist/mvirtd.js and the files are in dist/dashboard/.
    const dir = path.join(path.dirname(file), 'dashboard');
    const files = {} as Record<string, string | Uint8Array>;
    for (const [url, name] of Object.entries(DIST_FILES))
      files[url] = await readFile(path.join(dir, name));
    return toAssets(files as unknown as DashboardFiles);
  };
  return () => (loading ??= load());
}
