/**
 * Message counters for host status: totals plus per-second rates sampled once
 * a second (an unref'd timer, so it never keeps the process alive).
 */
export interface BrokerStats {
  clients: number;
  /** PUBLISH packets accepted from clients plus daemon publishes. */
  messagesIn: number;
  /** PUBLISH packets delivered to clients. */
  messagesOut: number;
  inPerSec: number;
  outPerSec: number;
}

export interface Counters {
  messagesIn: number;
  messagesOut: number;
  snapshot(clients: number): BrokerStats;
  stop(): void;
}

export function createCounters(intervalMs = 1000): Counters {
  let lastIn = 0;
  let lastOut = 0;
  let inPerSec = 0;
  let outPerSec = 0;
  const c: Counters = {
    messagesIn: 0,
    messagesOut: 0,
    snapshot: (clients) => ({
      clients,
      messagesIn: c.messagesIn,
      messagesOut: c.messagesOut,
      inPerSec,
      outPerSec,
    }),
    stop: () => clearInterval(timer),
  };
  const timer = setInterval(() => {
    inPerSec = ((c.messagesIn - lastIn) * 1000) / intervalMs;
    outPerSec = ((c.messagesOut - lastOut) * 1000) / intervalMs;
    lastIn = c.messagesIn;
    lastOut = c.messagesOut;
  }, intervalMs);
  timer.unref();
  return c;
}
