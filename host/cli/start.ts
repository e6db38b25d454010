/**
 * dist/mvirt.cjs, what bin/mvirt.js starts: the CLI bundle (dist/cli.cjs,
 * built from main.ts) run with V8's code cache (code-cache.ts), one cache per
 * command word (`mvirt vm …`, `mvirt run …`; anything else shares one).
 */
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { cacheFileFor, cacheSupported, runCached } from './code-cache.js';
import { COMMAND_WORDS } from './words.js';

/** The sha256 of dist/cli.cjs, set by the build (scripts/build.mjs): it tags the cache. */
declare const MVIRT_CLI_SHA256: string | undefined;

// A command allocates its schemas and keeps them to the end: each scavenge of
// V8's young generation, which starts at 1 MB and doubles, copied them again.
// Growing it eightfold: 2 scavenges instead of 5 in `mvirt vm ls`, 4.6 ms of
// GC instead of 27 (medians of 10 interleaved runs, --trace-gc, 2-core dev
// machine at load 15, Node 20). Set before the bundle runs, and in every run,
// as V8 checks a code cache against the flags it was made with; only on the
// V8 majors the cache knows (an unknown flag would print an error).
if (cacheSupported()) v8.setFlagsFromString('--semi-space-growth-factor=8');

const bundle = fileURLToPath(new URL('./cli.cjs', import.meta.url));
const word = process.argv.slice(2).find((a) => !a.startsWith('-'));
const part = word !== undefined && COMMAND_WORDS.includes(word) ? word : 'main';
const tag = typeof MVIRT_CLI_SHA256 === 'string' ? MVIRT_CLI_SHA256 : '';
runCached(bundle, cacheFileFor(bundle, process.env, undefined, part), tag);
