/**
 * Human output: aligned tables, key/value blocks, relative times, sizes.
 * Hand-written (about 80 lines) rather than a table dependency: we need
 * left/right alignment and no borders, nothing more.
 *
 * Every cell, value and JSON document goes through protocol/inert.ts: a
 * string a guest chose (agent version, a job's error, an event message) can
 * never clear the screen, set the window title, ring, link or reorder text.
 */
import { inert, inertJson } from '../../protocol/inert.js';

export type Align = 'left' | 'right';

/** Display width: code points, which is right for the ASCII and Latin text we print. */
const width = (s: string): number => [...s].length;

const pad = (s: string, w: number, align: Align): string => {
  const fill = ' '.repeat(Math.max(0, w - width(s)));
  return align === 'right' ? fill + s : s + fill;
};

/**
 * Columns separated by two spaces, headers in capitals, no trailing spaces
 * (the last column is not padded unless it is right-aligned).
 */
export function table(header: string[], rows: string[][], align: Align[] = []): string {
  const all = [header.map((h) => h.toUpperCase()), ...rows.map((r) => r.map(inert))];
  const widths = header.map((_, c) => Math.max(...all.map((r) => width(r[c] ?? ''))));
  return (
    all
      .map((r) =>
        header
          .map((_, c) => {
            const a = align[c] ?? 'left';
            const cell = r[c] ?? '';
            return c === header.length - 1 && a === 'left' ? cell : pad(cell, widths[c]!, a);
          })
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/** `Key:  value` lines with the values aligned; undefined values are left out. */
export function keyValues(pairs: [string, string | undefined][]): string {
  const present = pairs
    .filter((p): p is [string, string] => p[1] !== undefined && p[1] !== '')
    .map(([k, v]): [string, string] => [k, inert(v)]);
  const w = Math.max(0, ...present.map(([k]) => width(k) + 1));
  return present.map(([k, v]) => `${pad(`${k}:`, w, 'left')}  ${v}`).join('\n') + '\n';
}

/** "12s ago", "5m ago", "3h ago", "2d ago", "in 5m"; a date beyond 30 days. */
export function relativeTime(at: string | number | undefined | null, now: number): string {
  if (at === undefined || at === null || at === '') return '-';
  const t = typeof at === 'number' ? at : Date.parse(at);
  if (!Number.isFinite(t)) return String(at);
  const d = now - t;
  const abs = Math.abs(d);
  if (abs < 2000) return 'just now';
  const units: [number, string][] = [
    [86_400_000, 'd'],
    [3_600_000, 'h'],
    [60_000, 'm'],
    [1000, 's'],
  ];
  if (abs >= 30 * 86_400_000) return new Date(t).toISOString().slice(0, 10);
  const [ms, u] = units.find(([ms]) => abs >= ms)!;
  const n = `${Math.floor(abs / ms)}${u}`;
  return d >= 0 ? `${n} ago` : `in ${n}`;
}

/** "850 ms", "4.3 s", "2m05s" */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60_000);
  const s = Math.floor((ms % 60_000) / 1000);
  return `${m}m${String(s).padStart(2, '0')}s`;
}

/** "256 MiB", "2 GiB", "1.5 GiB" */
export function mib(n: number | undefined): string {
  if (n === undefined) return '-';
  if (n < 1024) return `${n} MiB`;
  const g = n / 1024;
  return `${Number.isInteger(g) ? g : g.toFixed(1)} GiB`;
}

/** Local wall-clock time for logs: "2024-05-01 12:03:04". */
export function clock(at: string | number): string {
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return String(at);
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A JSON document (indented), terminal-safe (see inertJson). */
/** Bytes in binary units, one decimal where needed (1.5 GiB, 16 MiB). */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[u]}`;
}

export const json = (v: unknown): string => inertJson(v, 2) + '\n';
/** One JSON line (for streams: `-f --json`, `top --json`), terminal-safe. */
export const jsonLine = (v: unknown): string => inertJson(v) + '\n';

/** Sort weight of a name's character at the first level: punctuation, digits, letters of either case. */
function primary(c: number): number {
  if (c >= 0x61 && c <= 0x7a) return c - 0x20; // a-z as A-Z
  if (c === 0x5f) return 0; // _
  if (c === 0x2d) return 1; // -
  if (c === 0x2e) return 2; // .
  return c; // 0-9 (below the letters), A-Z, and anything else by code
}

/**
 * Compare two names (protocol/topics.ts NAME_RE: letters, digits, `._-`) in
 * the order `a.localeCompare(b)` gives in the root collation (English, German,
 * French…): `_` `-` `.`, digits, then letters regardless of case; names equal
 * but for case put the lower case first. Not localeCompare itself: its first
 * call loads ICU's collator, 4.6 ms of `mvirt vm ls` (2-core dev machine,
 * Node 20), and a listing's order should not change with the user's locale
 * (Danish sorts `aa` after `z`).
 */
export function byName(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = primary(a.charCodeAt(i)) - primary(b.charCodeAt(i));
    if (d !== 0) return d;
  }
  if (a.length !== b.length) return a.length - b.length;
  // Same letters: the first case difference decides, lower case first.
  for (let i = 0; i < n; i++) {
    const d = a.charCodeAt(i) - b.charCodeAt(i);
    if (d !== 0) return -d;
  }
  return 0;
}
