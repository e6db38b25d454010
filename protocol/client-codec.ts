/**
 * The controller's codec (client.ts, connect.ts): the same encode and decode
 * as codec.ts, but cbor-x is loaded on the first CBOR payload or request, not
 * with the module. Controllers speak JSON unless told otherwise and the
 * daemon's public topics are JSON, so most never need it; loading cbor-x
 * (with the probe for its native addon) took 11–15 ms of `mvirt vm ls`'s
 * start (Node 20, 2-core dev machine).
 */
import type * as CborX from 'cbor-x';
import { createRequire } from 'node:module';
import { CBOR_OPTIONS, decodeJson, encodeJson, sniffEncoding, type Encoding } from './payload.js';

export { sniffEncoding, type Encoding };

let cbor: CborX.Encoder | undefined;

/** The CBOR encoder, loaded (synchronously, through Node's require) on first use. */
function cborCodec(): CborX.Encoder {
  if (cbor === undefined) {
    const { Encoder } = createRequire(import.meta.url)('cbor-x') as typeof CborX;
    cbor = new Encoder(CBOR_OPTIONS);
  }
  return cbor;
}

export function encode(value: unknown, encoding: Encoding): Buffer {
  return encoding === 'cbor' ? cborCodec().encode(value) : encodeJson(value);
}

/** Decode a payload; throws on malformed input. */
export function decode(payload: Uint8Array, encoding: Encoding = sniffEncoding(payload)): unknown {
  return encoding === 'json' ? decodeJson(payload) : cborCodec().decode(payload);
}
