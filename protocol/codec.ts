/**
 * Payload codecs. Agent traffic is CBOR; public topics default to JSON; RPC
 * replies use the request's encoding (payload.ts tells the two apart).
 */
import { Encoder } from 'cbor-x';
import { CBOR_OPTIONS, decodeJson, encodeJson, sniffEncoding, type Encoding } from './payload.js';

export { sniffEncoding, type Encoding };

// One shared encoder (payload.ts CBOR_OPTIONS).
const cbor = new Encoder(CBOR_OPTIONS);

export function encode(value: unknown, encoding: Encoding): Buffer {
  return encoding === 'cbor' ? cbor.encode(value) : encodeJson(value);
}

/** Decode a payload; throws on malformed input (callers map that to BAD_REQUEST). */
export function decode(payload: Uint8Array, encoding: Encoding = sniffEncoding(payload)): unknown {
  return encoding === 'json' ? decodeJson(payload) : cbor.decode(payload);
}

export const encodeCbor = (value: unknown): Buffer => cbor.encode(value);
export const decodeCbor = (payload: Uint8Array): unknown => cbor.decode(payload);
