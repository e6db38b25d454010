/**
 * The event/audit log: one append that writes SQLite (the durable record that
 * `events.query` reads), publishes on `<root>/events` (JSON, live) and logs to
 * pino. State-changing operations use level `audit` and name every object they
 * touch, so the log of any VM, job or image is one indexed query away.
 */
import type { Bus } from '../broker/types.js';
import type { EventQuery, EventRepo, EventLevel } from '../store/index.js';
import type { EventRecord, VmEvent } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import type { MvirtLogger } from '../log.js';
import { inert } from '../../protocol/inert.js';
import { createGuestGate, type GuestGate, type GuestGateOptions } from './guest-gate.js';
import { actorClientId, actorName, currentActing } from '../auth/actor.js';

export interface AppendEvent {
  level: EventLevel;
  component: string;
  message: string;
  objects: readonly string[];
  data?: unknown;
}

/**
 * Audit records and the rest are kept apart (store/events.ts): a flood of
 * guest-caused events fills only its own bound, never evicts an audit record.
 */
export interface Retention {
  /** Events other than audit records older than this many days are dropped. */
  days: number;
  /** At most this many events other than audit records are kept. */
  maxRows: number;
  /** Audit records are kept this many days (default: a year, at least `days`). */
  auditDays?: number;
  /** At most this many audit records are kept (default 1,000,000). */
  auditMaxRows?: number;
}

export const DEFAULT_AUDIT_DAYS = 365;
export const DEFAULT_AUDIT_MAX_ROWS = 1_000_000;

export interface EventLog {
  append(e: AppendEvent): EventRecord;
  /**
   * Events a guest's messages cause: rate-limited per VM and aggregated
   * (see guest-gate.ts); `refuse` counts a guest message refused outright.
   */
  guest: Pick<GuestGate, 'append' | 'refuse' | 'flush'>;
  /** Publish a VM's public event (`vm/<id>/events`, PROTOCOL shape). */
  publishVmEvent(vmId: string, e: VmEvent): void;
  query(q: EventQuery): EventRecord[];
  prune(): number;
  close(): void;
}

/** Prune at least this often; more often with a small maxRows (see pruneEvery). */
const PRUNE_EVERY_APPENDS = 1000;
const PRUNE_INTERVAL_MS = 3600_000;

export function createEventLog(deps: {
  repo: EventRepo;
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  retention: Retention;
  guestGate?: Partial<GuestGateOptions>;
}): EventLog {
  const { repo, bus, topics, log, retention } = deps;
  const auditDays = Math.max(retention.auditDays ?? DEFAULT_AUDIT_DAYS, retention.days);
  const auditMaxRows = retention.auditMaxRows ?? DEFAULT_AUDIT_MAX_ROWS;
  let sinceprune = 0;
  // The store never holds more than each bound plus a tenth of the smaller between prunes.
  const pruneEvery = Math.max(
    1,
    Math.min(PRUNE_EVERY_APPENDS, Math.floor(Math.min(retention.maxRows, auditMaxRows) / 10)),
  );
  // Publishing is fire-and-forget: the SQLite row is the record, a lost live
  // message must never fail the operation that produced it.
  const publish = (topic: string, payload: unknown): void => {
    bus.publish(topic, JSON.stringify(payload)).catch((err: unknown) => {
      log.warn({ err, topic }, 'event publish failed');
    });
  };

  const prune = (): number => {
    sinceprune = 0;
    const t = Date.now();
    const n = repo.prune({
      before: t - retention.days * 86400_000,
      maxRows: retention.maxRows,
      auditBefore: t - auditDays * 86400_000,
      auditMaxRows,
    });
    if (n > 0) log.debug({ removed: n }, 'event log pruned');
    return n;
  };
  const timer = setInterval(prune, PRUNE_INTERVAL_MS);
  timer.unref();

  function append(e: AppendEvent): EventRecord {
    const at = Date.now();
    const { actor: who } = currentActing();
    const actor = actorName(who);
    const actorClient = actorClientId(who);
    const id = repo.append({ ...e, at, actor, actorClient });
    const rec: EventRecord = {
      id,
      at: new Date(at).toISOString(),
      level: e.level,
      component: e.component,
      message: e.message,
      objects: [...e.objects],
    };
    if (e.data !== undefined) rec.data = e.data;
    rec.actor = actor;
    if (actorClient !== null) rec.actorClient = actorClient;
    // pino's JSON escapes C0 but not C1 or bidi characters: a message that
    // quotes a guest's words is made inert for the daemon's own log too.
    log[e.level](
      { component: e.component, objects: e.objects, data: e.data, actor, actorClient },
      inert(e.message),
    );
    publish(topics.events, rec);
    if (++sinceprune >= pruneEvery) prune();
    return rec;
  }
  const guest = createGuestGate({ append: (e) => void append(e), options: deps.guestGate });

  return {
    append,
    guest,
    publishVmEvent(vmId, e) {
      publish(topics.vmEvents(vmId), e);
    },
    query: (q) => repo.query(q),
    prune,
    close: () => {
      clearInterval(timer);
      guest.close();
    },
  };
}
