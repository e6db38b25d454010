/**
 * Where the running daemon gets its dashboard: next to the bundled mvirtd
 * (dist/dashboard/, written by `npm run build`), or, when mvirtd runs from its
 * TypeScript source, an in-memory esbuild build of the current source, so a
 * stale dist/ never shadows an edit.
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { Assets, Asset } from '../http/server.js';
import { buildDashboard, distName, type DashboardFiles } from './build.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

function toAssets(files: DashboardFiles): Assets {
  const out = new Map<string, Asset>();
  for (const [url, raw] of files) {
    const body = Buffer.from(raw);
    out.set(url, {
      contentType: TYPES[path.extname(distName(url))] ?? 'application/octet-stream',
      body,
      gzip: gzipSync(body, { level: 9 }),
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`,
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
    const files: DashboardFiles = new Map();
    for (const name of await readdir(dir))
      files.set(
        name === 'index.html' ? '/' : `/assets/${name}`,
        await readFile(path.join(dir, name)),
      );
    return toAssets(files);
  };
  return () => (loading ??= load());
}
