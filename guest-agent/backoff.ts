/** Capped exponential backoff with a little jitter (so many VMs on one TCP broker do not retry in lockstep). */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** 0..1: each delay is randomised by ± this fraction. */
  jitter: number;
}

// A virtio-serial port whose host side is not connected yet reads EOF at once,
// so retrying is cheap; the cap stays low so that the agent is connected soon
// after the daemon attaches (boot-to-ready is a product target).
export const DEFAULT_BACKOFF: BackoffOptions = {
  initialMs: 50,
  maxMs: 2000,
  factor: 2,
  jitter: 0.2,
};

export interface Backoff {
  next(): number;
  reset(): void;
}

export function createBackoff(o: BackoffOptions = DEFAULT_BACKOFF, random = Math.random): Backoff {
  let attempt = 0;
  return {
    next() {
      const base = Math.min(o.maxMs, o.initialMs * o.factor ** attempt);
      attempt++;
      return Math.max(0, Math.round(base * (1 + o.jitter * (2 * random() - 1))));
    },
    reset() {
      attempt = 0;
    },
  };
}
