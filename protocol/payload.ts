/**
 * Payload encodings without the CBOR library: what a payload is (by its first
 * byte) and JSON. codec.ts adds CBOR for the daemon and the agent;
 * client-codec.ts loads CBOR only when a controller meets it.
 *
 * CBOR payloads are told apart from JSON by their first byte: a JSON request
 * is an object and starts with `{` (after optional whitespace), a CBOR map
 * starts with major type 5 (0xa0..0xbf).
 */

export type Encoding = 'json' | 'cbor';

/**
 * cbor-x options everywhere mvirt speaks CBOR: no record extensions, so any
 * CBOR decoder (not only cbor-x) can read what we send.
 */
export const CBOR_OPTIONS = { useRecords: false, mapsAsObjects: true, tagUint8Array: false };

/** UTF-8 byte-order mark: some tools (PowerShell, Notepad) start JSON with it. */
const hasBom = (p: Uint8Array): boolean =>
  p.length >= 3 && p[0] === 0xef && p[1] === 0xbb && p[2] === 0xbf;

export function sniffEncoding(payload: Uint8Array): Encoding {
  for (const b of hasBom(payload) ? payload.subarray(3) : payload) {
    if (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d) continue;
    return b === 0x7b ? 'json' : 'cbor';
  }
  return 'json';
}

/** A JSON payload (a leading byte-order mark is skipped); throws on malformed input. */
export const decodeJson = (payload: Uint8Array): unknown =>
  JSON.parse(
    Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString(
      'utf8',
      hasBom(payload) ? 3 : 0,
    ),
  );

export const encodeJson = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
