/**
 * Payload codecs. Agent traffic is CBOR; public topics default to JSON; RPC
 * replies use the request's encoding. CBOR payloads are told apart from JSON by
 * their first byte: a JSON request is an object and starts with `{` (after
 * optional whitespace), a CBOR map starts with major type 5 (0xa0..0xbf).
 */
import { Encoder } from 'cbor-x';

export type Encoding = 'json' | 'cbor';

// One shared encoder without record extensions so any CBOR decoder (not only
// cbor-x) can read what we send.
const cbor = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false });

export function encode(value: unknown, encoding: Encoding): Buffer {
  return encoding === 'cbor' ? cbor.encode(value) : Buffer.from(JSON.stringify(value));
}

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

/** Decode a payload; throws on malformed input (callers map that to BAD_REQUEST). */
export function decode(payload: Uint8Array, encoding: Encoding = sniffEncoding(payload)): unknown {
  if (encoding === 'json')
    return JSON.parse(
      Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString(
        'utf8',
        hasBom(payload) ? 3 : 0,
      ),
    );
  return cbor.decode(payload);
}

export const encodeCbor = (value: unknown): Buffer => cbor.encode(value);
export const decodeCbor = (payload: Uint8Array): unknown => cbor.decode(payload);
