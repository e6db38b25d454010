/**
 * UTF-8 sizes without Node's Buffer: protocol/ also runs in the dashboard
 * (browser), where `Buffer` does not exist. TextEncoder is in both.
 */
const encoder = new TextEncoder();

/** The length of `s` in bytes of UTF-8. */
export const utf8Length = (s: string): number => encoder.encode(s).length;
