/**
 * Failed-login rate limits, per source address and per user name, for MQTT and
 * HTTP alike. Each key has a bucket of `burst` failures that refills at
 * `perSecond`; while a bucket is empty, logins from that source (or for that
 * user) are refused before any scrypt runs, so a password-guessing loop costs
 * the daemon a map lookup instead of 16 MiB and ~50 ms of the thread pool.
 * Successful logins cost nothing here. Buckets are kept for at most
 * `maxKeys` keys (oldest dropped): the limiter's own memory stays bounded.
 */
export interface LoginLimitOptions {
  burst: number;
  perSecond: number;
  maxKeys: number;
  /**
   * A refused login is answered after this long (a tarpit): refused at once,
   * 64 connections looping a wrong password reconnect as fast as the event
   * loop lets them and take it from everyone else; held, each costs one
   * timer and its socket (bounded by the listener's maxConnections).
   */
  penaltyMs: number;
}

/**
 * 20 failures at once, then one every 2 s per source, and the same per user:
 * a person who mistypes is never slowed; a guessing loop gets 0.5 tries/s.
 */
export const DEFAULT_LOGIN_LIMITS: LoginLimitOptions = {
  burst: 20,
  perSecond: 0.5,
  maxKeys: 10_000,
  penaltyMs: 2000,
};

export interface LoginLimiter {
  readonly penaltyMs: number;
  /** null when a login may be tried, otherwise why not (and when to retry). */
  check(source: string | null, user: string | undefined): string | null;
  failed(source: string | null, user: string | undefined): void;
}

export function createLoginLimiter(
  o: LoginLimitOptions = DEFAULT_LOGIN_LIMITS,
  now: () => number = Date.now,
): LoginLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();

  function level(key: string): { tokens: number; at: number } {
    const t = now();
    let b = buckets.get(key);
    if (!b) {
      if (buckets.size >= o.maxKeys) buckets.delete(buckets.keys().next().value!);
      b = { tokens: o.burst, at: t };
      buckets.set(key, b);
    }
    b.tokens = Math.min(o.burst, b.tokens + ((t - b.at) / 1000) * o.perSecond);
    b.at = t;
    return b;
  }
  const keys = (source: string | null, user: string | undefined): string[] => [
    ...(source !== null ? [`src:${source}`] : []),
    ...(user !== undefined ? [`user:${user}`] : []),
  ];

  return {
    penaltyMs: o.penaltyMs,
    check(source, user) {
      for (const k of keys(source, user)) {
        const b = level(k);
        if (b.tokens < 1) {
          const wait = Math.ceil((1 - b.tokens) / o.perSecond);
          return `too many failed logins ${k.startsWith('src:') ? 'from this address' : 'for this user'}; retry in ${wait} s`;
        }
      }
      return null;
    },
    failed(source, user) {
      for (const k of keys(source, user)) level(k).tokens -= 1;
    },
  };
}
