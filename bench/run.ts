/**
 * `npm run bench [-- filter…]`: imports every bench/*.ts module (except this
 * runner and lib.ts), runs their default export one after another (never in
 * parallel: 2 cores), and prints one table plus a closing note with every
 * ratio against its target. Arguments filter modules by file name
 * (`npm run bench -- broker rpc`).
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { meetsTarget, type BenchModule, type BenchRow } from './lib.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const filters = process.argv.slice(2).filter((a) => !a.startsWith('-'));

const modules = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && f !== 'lib.ts')
  .sort();

const toRun = modules.filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)));
if (toRun.length === 0) {
  console.error(`no bench module matches ${filters.join(' ')}; modules: ${modules.join(', ')}`);
  process.exit(2);
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(3);
}

const rows: Array<BenchRow & { module: string }> = [];
for (const file of toRun) {
  const name = file.replace(/\.ts$/, '');
  process.stderr.write(`bench: ${name}…\n`);
  const started = performance.now();
  try {
    const mod = (await import(pathToFileURL(path.join(here, file)).href)) as {
      default?: BenchModule;
    };
    if (typeof mod.default !== 'function') throw new Error('no default export function');
    const add = (rs: BenchRow[]) => {
      for (const r of rs) rows.push({ ...r, module: name });
    };
    add(await mod.default(add));
  } catch (err) {
    rows.push({
      module: name,
      name: `${name} FAILED`,
      value: NaN,
      unit: '',
      note: err instanceof Error ? err.message : String(err),
    });
  }
  process.stderr.write(
    `bench: ${name} done in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
  );
}

const table = rows.map((r) => {
  const ok = meetsTarget(r.ratio, r.target);
  return [
    r.name,
    fmt(r.value),
    r.unit,
    r.target ? `${r.target} ${ok === null ? '?' : ok ? 'ok' : 'MISSED'}` : '',
    r.note ?? '',
  ];
});
const head = ['bench', 'value', 'unit', 'target', 'note'];
const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
const line = (cells: string[]) =>
  cells
    .map((c, i) => (i === 1 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
    .join('  ')
    .trimEnd();
console.log(line(head));
console.log(line(widths.map((w) => '-'.repeat(w))));
for (const row of table) console.log(line(row));

const targets = rows.filter((r) => r.ratio !== undefined && r.target !== undefined);
if (targets.length > 0) {
  console.log('\nTargets:');
  for (const r of targets) {
    const ok = meetsTarget(r.ratio, r.target);
    console.log(`  ${r.name}: ${fmt(r.ratio!)} (target ${r.target}) ${ok ? 'ok' : 'MISSED'}`);
  }
}
if (rows.some((r) => Number.isNaN(r.value))) process.exitCode = 1;
