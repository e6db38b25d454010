/**
 * Who may use the HTTP listener: the broker's rules, over HTTP. With a users
 * file, every request needs HTTP Basic credentials of a user in it (the same
 * scrypt hashes); anonymous requests are served only where anonymous MQTT
 * controllers are allowed (--allow-anonymous, loopback peers).
 *
 * scrypt costs tens of milliseconds on purpose; a Prometheus scrape every few
 * seconds or a page load with its assets would pay it on every request, so a
 * successful check is remembered briefly, keyed by a hash of the header.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { checkUser } from '../broker/passwords.js';
import { isLoopback } from '../broker/registry.js';

export type HttpPrincipal = { user: string | null };

export interface HttpAuth {
  /** The principal, or null when the request must be refused (401). */
  check(req: IncomingMessage): Promise<HttpPrincipal | null>;
  /** Does this listener ask for credentials at all (for the page's login hint)? */
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
  allowAnonymous: boolean;
  now?: () => number;
}): HttpAuth {
  const now = o.now ?? Date.now;
  const cache = new Map<string, { user: string; until: number }>();

  async function check(req: IncomingMessage): Promise<HttpPrincipal | null> {
    const header = req.headers.authorization;
    if (header === undefined) {
      return o.allowAnonymous && isLoopback(req.socket.remoteAddress) ? { user: null } : null;
    }
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

  return { check, required: o.users.size > 0 || !o.allowAnonymous };
}
