/**
 * The agent's one outgoing buffer. Everything the agent has to say goes
 * through here, connected or not, so that a dropped channel loses nothing that
 * matters:
 *  - entries stay until the broker has them (PUBACK for QoS 1, written for
 *    QoS 0); entries in flight when the channel drops are sent again on the next
 *    connection (at-least-once: the host dedups output by jobId+seq);
 *  - it is bounded: telemetry and logs are dropped oldest-first beyond their
 *    caps (and counted); job output is never dropped, instead the outbox asks
 *    jobs to pause reading their pipes above a high-water mark and to resume
 *    below a low-water mark, so the child blocks on write.
 * mqtt.js has its own offline queue, but it is unbounded and has no such
 * policy, so each connection gets a fresh client and this is the only buffer.
 */
import type { AgentUpKind } from '../protocol/topics.js';

export interface OutboxLimits {
  /** Pause job output above this many buffered output bytes … */
  outputHighBytes: number;
  /** … and resume below this. */
  outputLowBytes: number;
  /** Buffered telemetry messages kept at most (oldest dropped). */
  maxTelemetry: number;
  /** Buffered log messages kept at most (oldest dropped). */
  maxLogs: number;
  /** Messages in flight (sent, not yet acknowledged) at most. */
  window: number;
  /** Bytes in flight at most. */
  windowBytes: number;
}

export const DEFAULT_OUTBOX_LIMITS: OutboxLimits = {
  outputHighBytes: 2 * 1024 * 1024,
  outputLowBytes: 512 * 1024,
  maxTelemetry: 12,
  maxLogs: 64,
  window: 64,
  windowBytes: 1024 * 1024,
};

export interface Entry {
  readonly order: number;
  readonly kind: AgentUpKind;
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1;
  /** Called once the broker has the message (not on drop). */
  readonly onSent?: (() => void) | undefined;
}

/** Sends one entry on the current connection; `done(err)` when acknowledged or failed. */
export type Sender = (entry: Entry, done: (err?: Error) => void) => void;

export interface Drops {
  telemetry: number;
  log: number;
  failed: number;
}

export interface Outbox {
  push(
    kind: AgentUpKind,
    topic: string,
    payload: Buffer,
    opts?: { qos?: 0 | 1; onSent?: () => void },
  ): void;
  /** A connection is up: start sending through it. */
  attach(send: Sender): void;
  /** The connection is gone: take back what was in flight, to resend later. */
  detach(): void;
  /** True while job output should stay paused. */
  readonly outputPaused: boolean;
  /** Called with the new state whenever `outputPaused` changes. */
  onFlow(fn: (paused: boolean) => void): () => void;
  /**
   * Forget every entry (pending or in flight) whose topic starts with
   * `prefix`, without calling its onSent; returns how many.
   */
  discard(prefix: string): number;
  /** Drops since the last call (and resets the counters). */
  takeDrops(): Drops;
  stats(): { pending: number; inflight: number; outputBytes: number; drops: Drops };
}

export function createOutbox(limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS): Outbox {
  let pending: Entry[] = [];
  const inflight = new Map<number, Entry>();
  let inflightBytes = 0;
  let outputBytes = 0;
  let order = 0;
  let sender: Sender | null = null;
  let generation = 0;
  let paused = false;
  const drops: Drops = { telemetry: 0, log: 0, failed: 0 };
  const flowListeners = new Set<(paused: boolean) => void>();

  const setPaused = (p: boolean) => {
    if (p === paused) return;
    paused = p;
    for (const fn of flowListeners) fn(p);
  };

  const release = (e: Entry) => {
    if (e.kind === 'output') {
      outputBytes -= e.payload.length;
      if (paused && outputBytes <= limits.outputLowBytes) setPaused(false);
    }
  };

  const dropOldest = (kind: 'telemetry' | 'log', max: number) => {
    let count = 0;
    for (const e of pending) if (e.kind === kind) count++;
    if (count <= max) return;
    const idx = pending.findIndex((e) => e.kind === kind);
    pending.splice(idx, 1);
    drops[kind]++;
  };

  const pump = () => {
    const send = sender;
    const gen = generation;
    while (
      send &&
      pending.length > 0 &&
      inflight.size < limits.window &&
      inflightBytes < limits.windowBytes
    ) {
      const e = pending.shift() as Entry;
      inflight.set(e.order, e);
      inflightBytes += e.payload.length;
      send(e, (err) => {
        // A callback from a connection that is already gone: detach() has
        // taken the entry back, it will be sent again.
        if (gen !== generation || !inflight.has(e.order)) return;
        inflight.delete(e.order);
        inflightBytes -= e.payload.length;
        // An error on a live connection is permanent (mqtt.js validation):
        // resending would loop, so count it and move on.
        if (err) drops.failed++;
        release(e);
        if (!err) e.onSent?.();
        pump();
      });
    }
  };

  return {
    push(kind, topic, payload, opts = {}) {
      // QoS 1 for everything by default: brokers may let a QoS 0 message
      // overtake earlier QoS 1 ones (aedes does: it acknowledges, then fans
      // out), and the host relies on order (hello first, output by seq).
      const qos = opts.qos ?? 1;
      pending.push({ order: order++, kind, topic, payload, qos, onSent: opts.onSent });
      if (kind === 'telemetry') dropOldest('telemetry', limits.maxTelemetry);
      else if (kind === 'log') dropOldest('log', limits.maxLogs);
      else if (kind === 'output') {
        outputBytes += payload.length;
        if (outputBytes >= limits.outputHighBytes) setPaused(true);
      }
      pump();
    },
    attach(send) {
      generation++;
      sender = send;
      pump();
    },
    detach() {
      generation++;
      sender = null;
      if (inflight.size === 0) return;
      const back = [...inflight.values()].sort((a, b) => a.order - b.order);
      inflight.clear();
      inflightBytes = 0;
      pending = [...back, ...pending];
    },
    discard(prefix) {
      const gone = (e: Entry) => e.topic.startsWith(prefix);
      let n = 0;
      for (const [order, e] of inflight) {
        if (!gone(e)) continue;
        inflight.delete(order);
        inflightBytes -= e.payload.length;
        release(e);
        n++;
      }
      const keep = pending.filter((e) => !gone(e));
      for (const e of pending) if (gone(e)) release(e);
      n += pending.length - keep.length;
      pending = keep;
      pump();
      return n;
    },
    get outputPaused() {
      return paused;
    },
    onFlow(fn) {
      flowListeners.add(fn);
      return () => flowListeners.delete(fn);
    },
    takeDrops() {
      const d = { ...drops };
      drops.telemetry = drops.log = drops.failed = 0;
      return d;
    },
    stats() {
      return { pending: pending.length, inflight: inflight.size, outputBytes, drops: { ...drops } };
    },
  };
}
