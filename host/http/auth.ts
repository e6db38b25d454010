/**
 * Who may use the HTTP listener: the broker's rules, over HTTP. Every request
 * needs HTTP Basic credentials of a user in the users file (the same scrypt
 * hashes); there is no anonymous HTTP, from loopback either: loopback is not
 * an identity (a guest on QEMU's slirp and every local user reach it).
 *
 * scrypt costs tens of milliseconds on purpose; a Prometheus scrape every few
 * seconds or a page load with its assets would pay it on every request, so a
 * successful check is remembered briefly, keyed by a hash of the header.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { checkUser } from '../broker/passwords.js';

export type HttpPrincipal = { user: string | null };

export interface HttpAuth {
  /** The principal, or null when the request must be refused (401). */
  check(req: IncomingMessage): Promise<HttpPrincipal | null>;
  /** Always true: kept for callers that show a login hint. */
  readonly required: boolean;
}

const CACHE_MS = 60_000;
const CACHE_MAX = 256;

/** `Basic base64(user:password)` → its parts; null when malformed. */
export function parseBasic(header: string | undefined): { user: string; password: string } | null {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return null;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const i = text.indexOf(':');
  if (i <= 0) return null;
  return { user: text.slice(0, i), password: text.slice(i + 1) };
}

export function createHttpAuth(o: {
  users: ReadonlyMap<string, string>;
  now?: () => number;
}): HttpAuth {
  const now = o.now ?? Date.now;
  const cache = new Map<string, { user: string; until: number }>();

  async function check(req: IncomingMessage): Promise<HttpPrincipal | null> {
    const header = req.headers.authorization;
    if (header === undefined) return null;
    const key = createHash('sha256').update(header).digest('base64');
    const hit = cache.get(key);
    if (hit && hit.until > now()) return { user: hit.user };
    const creds = parseBasic(header);
    if (!creds) return null;
    if (!(await checkUser(o.users, creds.user, creds.password))) return null;
    if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
    cache.set(key, { user: creds.user, until: now() + CACHE_MS });
    return { user: creds.user };
  }

  return { check, required: true };
}
