/**
 * Inert text: the one place that makes a string safe to show on a terminal
 * or a page, and the character classes the protocol accepts from a guest.
 *
 * Every string a guest chooses (its hello, log lines, error texts, telemetry
 * names) is hostile until shown through here: an ESC starts a control
 * sequence (screen clear, cursor moves, window title `OSC 0`, hyperlinks
 * `OSC 8`), BEL rings, C1 controls (U+0080–U+009F) are 8-bit ESC sequences
 * on terminals that honour them, and bidirectional overrides (U+202E …) make
 * text read differently from what it is. Each such character is replaced by
 * its visible escape (`\x1b`, `\u202e`), so nothing is lost and nothing acts.
 *
 * Hand-written (one regular expression): the npm packages that strip ANSI
 * sequences (strip-ansi and kin) match well-formed sequences only and leave
 * lone controls, C1 and bidi characters alone.
 */
/* eslint-disable no-control-regex -- matching control characters is this module's purpose */

/**
 * Characters that act instead of print: C0 controls (tab and newline
 * included: they break table cells and forge lines), DEL, C1 controls, the
 * Arabic letter mark, LRM/RLM, line and paragraph separators, the bidi
 * embeddings and overrides (U+202A–U+202E), the bidi isolates
 * (U+2066–U+2069) and the BOM / zero-width no-break space.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;
const UNSAFE_ONE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;
const UNSAFE_ABOVE_C0 = /[\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;
const UNSAFE_ABOVE_C0_ALL = new RegExp(UNSAFE_ABOVE_C0.source, 'g');

const escapeOf = (c: string): string => {
  const n = c.charCodeAt(0);
  return n < 0x100
    ? `\\x${n.toString(16).padStart(2, '0')}`
    : `\\u${n.toString(16).padStart(4, '0')}`;
};

/** `s` with every control, C1 and bidi character replaced by its visible escape. */
export function inert(s: string): string {
  return UNSAFE_ONE.test(s) ? s.replace(UNSAFE, escapeOf) : s;
}

/** Lines of text made inert but for their newlines (notes and errors on stderr). */
export const inertLines = (s: string): string => s.split('\n').map(inert).join('\n');

/** Whether `s` shows as itself (no character that `inert` would replace). */
export const isInert = (s: string): boolean => !UNSAFE_ONE.test(s);

/**
 * `JSON.stringify(value)` safe for a terminal: JSON already escapes C0, but
 * not DEL, C1 or bidi characters; those become `\uXXXX` escapes, which parse
 * back to the same value (the output is still exactly the same JSON data).
 */
export function inertJson(value: unknown, space?: number): string {
  const s = JSON.stringify(value, null, space);
  // C0 is left out: JSON escapes it inside strings, and outside them it is
  // the indentation's own newlines.
  return UNSAFE_ABOVE_C0.test(s)
    ? s.replace(UNSAFE_ABOVE_C0_ALL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    : s;
}

/**
 * A copy of `value` with every string in it made inert (objects, arrays and
 * strings; byte arrays and other values kept as they are). For guest messages
 * whose free text (log lines, error messages) may hold anything.
 */
export function inertDeep<T>(value: T): T {
  if (typeof value === 'string') return inert(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => inertDeep(v)) as T;
  if (value !== null && typeof value === 'object' && !(value instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = inertDeep(v);
    return out as T;
  }
  return value;
}

/** Printable text: no control, C1 or bidi character (what `isInert` accepts). */
export const PRINTABLE =
  /^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]*$/;
/** Printable without spaces: names (interfaces, hostnames as the kernel keeps them). */
export const PRINTABLE_WORD =
  /^[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]*$/;
