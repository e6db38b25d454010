/**
 * Per-controller quotas on what a controller leaves in the broker's memory.
 *
 * Retained messages: aedes keeps every retained message in memory for good, so
 * one controller could store until mvirtd runs out (128 MiB were stored in the
 * issue 11 attack). Each identity (acl.ts identityOf: a user, a unix user or
 * anonymous) may keep `maxBytes` of retained payload in at most `maxMessages`
 * topics; an empty retained message frees its topic. A topic overwritten by
 * another identity moves to that identity's account.
 */
export interface RetainedQuota {
  /** Account a retained publish; null when allowed, otherwise why it is refused. */
  charge(identity: string, topic: string, bytes: number): string | null;
  usage(identity: string): { bytes: number; messages: number };
}

export interface RetainedLimits {
  maxBytes: number;
  maxMessages: number;
}

/** 128 MiB per controller: the 129th MiB is refused (issue 11). */
export const DEFAULT_RETAINED_LIMITS: RetainedLimits = {
  maxBytes: 128 * 1024 * 1024,
  maxMessages: 10_000,
};

export function createRetainedQuota(
  limits: RetainedLimits = DEFAULT_RETAINED_LIMITS,
): RetainedQuota {
  const byTopic = new Map<string, { identity: string; bytes: number }>();
  const usage = new Map<string, { bytes: number; messages: number }>();
  const account = (identity: string): { bytes: number; messages: number } => {
    let u = usage.get(identity);
    if (!u) usage.set(identity, (u = { bytes: 0, messages: 0 }));
    return u;
  };

  return {
    charge(identity, topic, bytes) {
      const old = byTopic.get(topic);
      const mine = account(identity);
      if (bytes > 0) {
        const same = old?.identity === identity;
        const nextBytes = mine.bytes + bytes - (same ? old.bytes : 0);
        const nextMessages = mine.messages + (same ? 0 : 1);
        if (nextBytes > limits.maxBytes)
          return `retained quota: ${identity} would keep ${nextBytes} bytes, limit ${limits.maxBytes}; clear some with an empty retained message`;
        if (nextMessages > limits.maxMessages)
          return `retained quota: ${identity} would keep ${nextMessages} retained topics, limit ${limits.maxMessages}`;
      }
      if (old) {
        const prev = account(old.identity);
        prev.bytes -= old.bytes;
        prev.messages--;
        byTopic.delete(topic);
      }
      if (bytes > 0) {
        mine.bytes += bytes;
        mine.messages++;
        byTopic.set(topic, { identity, bytes });
      }
      return null;
    },
    usage: (identity) => ({ ...account(identity) }),
  };
}
