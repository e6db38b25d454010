/**
 * What mvirtd owes the uplink, bounded. Two kinds of message, kept apart:
 *
 *  - retained state (host status, VM, job, pool, volume records): only the
 *    last payload of each topic matters, so it is kept per topic and sent
 *    again in full after every reconnect (the broker may have lost it, or
 *    hold the last will in place of the status). An empty payload (a deleted
 *    object) is kept until it went out once, so a broker that missed it does
 *    not keep a ghost. A topic whose latest payload has not gone out yet is
 *    pending, and goes out before any queued message once the link has room:
 *    a busy link delays state, it never leaves it stale until a reconnect.
 *  - everything else (events, job output, telemetry): a FIFO, sent as the
 *    link allows; while the link is down or too slow, at most `maxQueued`
 *    wait and the oldest go first (counted in `dropped`). They are all
 *    replayable from mvirtd (events.query, job.logs, metrics.query).
 *
 * No method ever waits: VM and job work publishes into this and goes on.
 */

export interface OutMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  retain: boolean;
}

export interface OutboxFigures {
  queued: number;
  dropped: number;
  retainedTopics: number;
}

export interface Outbox {
  /** Record a message (never waits; over the bound the oldest queued one is dropped). */
  add(m: OutMessage): void;
  /** The retained state, oldest first; tombstones included. */
  retained(): OutMessage[];
  /** A (re)connect: every retained topic is owed to the broker again. */
  resendRetained(): void;
  /** Take up to n pending retained messages, oldest first. */
  takeRetained(n: number): OutMessage[];
  /** A tombstone went out: forget the topic. */
  sentTombstone(topic: string): void;
  /** Take up to n queued messages, oldest first. */
  take(n: number): OutMessage[];
  /** Messages that were handed to the link and not delivered (link lost): counted as dropped. */
  lost(n: number): void;
  figures(): OutboxFigures;
}

export function createOutbox(o: { maxQueued: number; maxRetainedTopics: number }): Outbox {
  // A Map keeps insertion order: delete + set moves a topic to the end, so
  // the oldest topic is the first one, evicted first when over the bound.
  const retained = new Map<string, OutMessage>();
  /** Retained topics whose latest payload has not been handed to the link; in order. */
  let pending = new Set<string>();
  const queue: OutMessage[] = [];
  let head = 0;
  let dropped = 0;

  const queued = (): number => queue.length - head;

  function compact(): void {
    // Shift in O(1) amortised: drop the consumed head once it is half the array.
    if (head > 1024 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
  }

  return {
    add(m) {
      if (m.retain) {
        retained.delete(m.topic);
        retained.set(m.topic, m);
        pending.delete(m.topic);
        pending.add(m.topic);
        if (retained.size > o.maxRetainedTopics) {
          const oldest = retained.keys().next().value as string;
          retained.delete(oldest);
          pending.delete(oldest);
          dropped++;
        }
        return;
      }
      if (o.maxQueued === 0) {
        dropped++;
        return;
      }
      queue.push(m);
      if (queued() > o.maxQueued) {
        head++;
        dropped++;
        compact();
      }
    },
    retained: () => [...retained.values()],
    resendRetained() {
      pending = new Set(retained.keys());
    },
    takeRetained(n) {
      const out: OutMessage[] = [];
      for (const topic of pending) {
        if (out.length >= n) break;
        pending.delete(topic);
        const m = retained.get(topic);
        if (m) out.push(m);
      }
      return out;
    },
    sentTombstone(topic) {
      if (retained.get(topic)?.payload.length === 0) retained.delete(topic);
    },
    take(n) {
      const out = queue.slice(head, head + n);
      head += out.length;
      if (head === queue.length) {
        queue.length = 0;
        head = 0;
      } else compact();
      return out;
    },
    lost(n) {
      dropped += n;
    },
    figures: () => ({
      queued: queued(),
      dropped,
      retainedTopics: [...retained.values()].filter((m) => m.payload.length > 0).length,
    }),
  };
}
