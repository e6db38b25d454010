/**
 * Find `replyTo` and `id` in a CBOR request that cbor-x could not decode
 * (nesting deeper than it allows, a malformed item after the envelope's
 * strings, an unknown simple value…), so that the request still gets its
 * error reply (PROTOCOL.md). Hand-written because no CBOR library decodes
 * "as far as it can": this walks only the top-level map, skipping values
 * iteratively (no recursion, so nesting depth costs nothing but a counter)
 * and reads definite- and indefinite-length text strings (RFC 8949 §3.2.3).
 * It reads at most the first 64 KiB and gives up on anything odd.
 */
const LIMIT = 64 * 1024;
const MAX_TEXT = 512;

interface Head {
  major: number;
  /** Argument value; -1 for indefinite length. */
  arg: number;
  next: number;
}

function head(b: Buffer, i: number): Head | null {
  if (i >= b.length) return null;
  const major = b[i]! >> 5;
  const info = b[i]! & 0x1f;
  if (info < 24) return { major, arg: info, next: i + 1 };
  const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
  if (size > 0) {
    if (i + 1 + size > b.length) return null;
    const arg = size === 8 ? Number(b.readBigUInt64BE(i + 1)) : b.readUIntBE(i + 1, size);
    return { major, arg, next: i + 1 + size };
  }
  if (info === 31 && major >= 2 && major <= 5) return { major, arg: -1, next: i + 1 };
  return null; // reserved additional information, or a break where none belongs
}

/** Offset just past the data item at i, or -1. */
function skip(b: Buffer, i: number): number {
  // Items still to read at each open level; -1 = indefinite (until a break).
  const pending: number[] = [1];
  while (pending.length > 0) {
    const top = pending.length - 1;
    if (pending[top] === 0) {
      pending.pop();
      continue;
    }
    if (pending[top] === -1 && b[i] === 0xff) {
      pending.pop();
      i++;
      continue;
    }
    if (pending[top]! > 0) pending[top]!--;
    const h = head(b, i);
    if (!h) return -1;
    i = h.next;
    switch (h.major) {
      case 2:
      case 3:
        if (h.arg === -1)
          pending.push(-1); // chunks follow, each a string
        else if ((i += h.arg) > b.length) return -1;
        break;
      case 4:
        pending.push(h.arg === -1 ? -1 : h.arg);
        break;
      case 5:
        pending.push(h.arg === -1 ? -1 : h.arg * 2);
        break;
      case 6:
        pending.push(1); // a tag wraps one item
        break;
      default:
        break; // integers, simple values, floats: the head is all
    }
    if (i > b.length) return -1;
  }
  return i;
}

/** A text string at i (definite or chunked), with the offset after it. */
function text(b: Buffer, i: number): { value: string; next: number } | null {
  const h = head(b, i);
  if (!h || h.major !== 3) return null;
  if (h.arg >= 0) {
    if (h.next + h.arg > b.length || h.arg > MAX_TEXT * 4) return null;
    return { value: b.toString('utf8', h.next, h.next + h.arg), next: h.next + h.arg };
  }
  let value = '';
  let j = h.next;
  while (j < b.length && b[j] !== 0xff) {
    const c = head(b, j);
    if (!c || c.major !== 3 || c.arg < 0 || c.next + c.arg > b.length) return null;
    value += b.toString('utf8', c.next, c.next + c.arg);
    if (value.length > MAX_TEXT * 4) return null;
    j = c.next + c.arg;
  }
  return j < b.length ? { value, next: j + 1 } : null;
}

export function salvageCbor(payload: Buffer): { replyTo?: string; id?: string } {
  const b = payload.subarray(0, LIMIT);
  const out: { replyTo?: string; id?: string } = {};
  let i = 0;
  // Tags around the envelope itself are skipped.
  for (let h = head(b, i); h && h.major === 6; h = head(b, i)) i = h.next;
  const map = head(b, i);
  if (!map || map.major !== 5) return out;
  i = map.next;
  for (let n = 0; map.arg === -1 ? b[i] !== 0xff : n < map.arg; n++) {
    const key = text(b, i);
    if (!key) return out;
    i = key.next;
    if (key.value === 'replyTo' || key.value === 'id') {
      const v = text(b, i);
      if (v && v.value.length > 0 && v.value.length <= MAX_TEXT) out[key.value] = v.value;
    }
    i = skip(b, i);
    if (i < 0 || i >= b.length) return out;
  }
  return out;
}
