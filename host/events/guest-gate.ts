/**
 * Guest-originated events, rate-limited and aggregated: what a guest's
 * messages cause (a hello, a refused hello …) reaches the event log through
 * a token bucket per VM; beyond it, and for every message refused outright,
 * only a count is kept, written once per window as one event per VM and kind
 * ("1,234 hellos refused in the last minute"). So a guest costs the event
 * log at most `burst` + (window / refill) + one summary per kind per window
 * rows, however fast it talks (issue 12 measured 236,000 hellos in 60 s).
 */
import type { AppendEvent } from './log.js';

export interface GuestGateOptions {
  /** Events a VM may cause at once … */
  burst: number;
  /** … then one per this many milliseconds. */
  refillMs: number;
  /** Counts of what was suppressed or refused are written once per window. */
  windowMs: number;
}

/**
 * A booting guest says hello once, a few more times if its channel drops; 10
 * at once and one a minute after covers reconnects after a daemon restart
 * and keeps a flooding VM at about 70 rows an hour.
 */
export const DEFAULT_GUEST_GATE: GuestGateOptions = {
  burst: 10,
  refillMs: 60_000,
  windowMs: 60_000,
};

export interface GuestGate {
  /** Append `e`, caused by the VM's guest, if its budget allows; else count it under `what`. */
  append(vmId: string, what: string, e: AppendEvent): boolean;
  /** Count a guest message refused outright (e.g. "hellos refused"). */
  refuse(vmId: string, what: string): void;
  /** Write the counts of the window now (also on every window tick). */
  flush(): void;
  close(): void;
}

interface Bucket {
  tokens: number;
  at: number;
  /** What was not written this window, by phrase. */
  counts: Map<string, number>;
}

const fmt = new Intl.NumberFormat('en');

export function createGuestGate(deps: {
  append: (e: AppendEvent) => void;
  options?: Partial<GuestGateOptions>;
  now?: () => number;
}): GuestGate {
  const o = { ...DEFAULT_GUEST_GATE, ...deps.options };
  const now = deps.now ?? Date.now;
  const buckets = new Map<string, Bucket>();
  let windowStart = now();

  const bucket = (vmId: string): Bucket => {
    let b = buckets.get(vmId);
    if (!b) buckets.set(vmId, (b = { tokens: o.burst, at: now(), counts: new Map() }));
    return b;
  };
  const count = (b: Bucket, what: string): void => {
    b.counts.set(what, (b.counts.get(what) ?? 0) + 1);
  };

  function flush(): void {
    const t = now();
    const span = t - windowStart;
    windowStart = t;
    const last =
      Math.abs(span - 60_000) < 1000 ? 'the last minute' : `the last ${Math.round(span / 1000)} s`;
    for (const [vmId, b] of buckets) {
      for (const [what, n] of b.counts)
        deps.append({
          level: 'warn',
          component: 'agent',
          message: `${fmt.format(n)} ${what} in ${last}`,
          objects: [vmId],
          data: { guest: true, suppressed: what, count: n, windowMs: span },
        });
      b.counts.clear();
      // A VM whose bucket is full again and that said nothing more is forgotten.
      if (b.tokens + (t - b.at) / o.refillMs >= o.burst) buckets.delete(vmId);
    }
  }
  const timer = setInterval(flush, o.windowMs);
  timer.unref();

  return {
    append(vmId, what, e) {
      const b = bucket(vmId);
      const t = now();
      b.tokens = Math.min(o.burst, b.tokens + (t - b.at) / o.refillMs);
      b.at = t;
      if (b.tokens < 1) {
        count(b, what);
        return false;
      }
      b.tokens -= 1;
      deps.append(e);
      return true;
    },
    refuse(vmId, what) {
      count(bucket(vmId), what);
    },
    flush,
    close: () => clearInterval(timer),
  };
}
