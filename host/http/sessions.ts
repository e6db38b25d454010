/**
 * Dashboard session tokens. A browser that passed HTTP Basic authentication
 * gets a random token to use as its MQTT password over WebSocket, so the user
 * logs in once and the page never holds (or re-sends) the real password; the
 * broker then treats the connection as that user, with the same ACL as any
 * controller. Tokens live in memory only (a daemon restart ends sessions).
 */
import { randomBytes } from 'node:crypto';

export interface SessionTokens {
  mint(user: string): { token: string; expiresAt: number };
  verify(user: string, token: string): boolean;
}

const MAX_TOKENS = 1024;

export function createSessionTokens(o: { ttlMs: number; now?: () => number }): SessionTokens {
  const now = o.now ?? Date.now;
  // Insertion order is expiry order (one ttl for all): the oldest go first.
  const tokens = new Map<string, { user: string; expiresAt: number }>();

  const dropExpired = (): void => {
    const t = now();
    for (const [k, v] of tokens) {
      if (v.expiresAt > t && tokens.size <= MAX_TOKENS) break;
      tokens.delete(k);
    }
  };

  return {
    mint(user) {
      dropExpired();
      // 256 random bits: guessing one is not a thing; the map lookup needs no constant time.
      const token = randomBytes(32).toString('base64url');
      const expiresAt = now() + o.ttlMs;
      tokens.set(token, { user, expiresAt });
      return { token, expiresAt };
    },
    verify(user, token) {
      const s = tokens.get(token);
      return s !== undefined && s.user === user && s.expiresAt > now();
    },
  };
}
