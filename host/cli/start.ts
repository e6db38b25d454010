/**
 * dist/mvirt.cjs, what bin/mvirt.js starts: the CLI bundle (dist/cli.cjs,
 * built from main.ts) run with V8's code cache (code-cache.ts), one cache per
 * command word (`mvirt vm …`, `mvirt run …`; anything else shares one).
 */
import { fileURLToPath } from 'node:url';
import { cacheFileFor, runCached } from './code-cache.js';
import { COMMAND_WORDS } from './words.js';

/** The sha256 of dist/cli.cjs, set by the build (scripts/build.mjs): it tags the cache. */
declare const MVIRT_CLI_SHA256: string | undefined;

const bundle = fileURLToPath(new URL('./cli.cjs', import.meta.url));
const word = process.argv.slice(2).find((a) => !a.startsWith('-'));
const part = word !== undefined && COMMAND_WORDS.includes(word) ? word : 'main';
const tag = typeof MVIRT_CLI_SHA256 === 'string' ? MVIRT_CLI_SHA256 : '';
runCached(bundle, cacheFileFor(bundle, process.env, undefined, part), tag);
