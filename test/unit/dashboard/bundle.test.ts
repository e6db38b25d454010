/**
 * The dashboard's first bundle draws the VM table (restore marks included)
 * before zod has loaded: zod and the schemas load later, as a chunk the page
 * imports dynamically (host/dashboard/schemas.ts). A value imported from
 * protocol/records.ts into a module of the first bundle would pull zod onto
 * the first render's path (into dashboard.js or a chunk it imports
 * statically); this catches it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildDashboard } from '../../../host/dashboard/build.js';

/** A string zod's own code carries, minified or not (its error class's name). */
const ZOD = 'ZodError';

test('zod is off the first bundle: only a dynamically imported chunk carries it', async () => {
  const files = await buildDashboard();
  const text = (url: string) => new TextDecoder().decode(files.get(url));
  // dashboard.js and every chunk it imports statically (`import("…")` is dynamic).
  const first = new Set<string>();
  const visit = (url: string): void => {
    if (first.has(url)) return;
    first.add(url);
    for (const m of text(url).matchAll(/(?:from|import)\s*["']\.\/(chunk-[\w-]+\.js)["']/g))
      visit(`/assets/${m[1]}`);
  };
  visit('/assets/dashboard.js');
  for (const url of first) assert.ok(!text(url).includes(ZOD), `${url} carries zod`);
  const later = [...files.keys()].filter((u) => u.startsWith('/assets/chunk-') && !first.has(u));
  assert.ok(
    later.some((u) => text(u).includes(ZOD)),
    `no later chunk carries zod (is the marker stale?): ${later.join(', ')}`,
  );
});
