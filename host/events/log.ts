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
import { actorClientId, actorName, currentActing } from '../auth/actor.js';

export interface AppendEvent {
  level: EventLevel;
  component: string;
  message: string;
  objects: readonly string[];
  data?: unknown;
}

export interface Retention {
  /** Events older than this many days are dropped. */
  days: number;
  /** At most this many events are kept. */
  maxRows: number;
}

export interface EventLog {
  append(e: AppendEvent): EventRecord;
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
}): EventLog {
  const { repo, bus, topics, log, retention } = deps;
  let sinceprune = 0;
  // The store never holds more than maxRows plus a tenth between prunes.
  const pruneEvery = Math.max(1, Math.min(PRUNE_EVERY_APPENDS, Math.floor(retention.maxRows / 10)));
  // Publishing is fire-and-forget: the SQLite row is the record, a lost live
  // message must never fail the operation that produced it.
  const publish = (topic: string, payload: unknown): void => {
    bus.publish(topic, JSON.stringify(payload)).catch((err: unknown) => {
      log.warn({ err, topic }, 'event publish failed');
    });
  };

  const prune = (): number => {
    sinceprune = 0;
    const n = repo.prune(Date.now() - retention.days * 86400_000, retention.maxRows);
    if (n > 0) log.debug({ removed: n }, 'event log pruned');
    return n;
  };
  const timer = setInterval(prune, PRUNE_INTERVAL_MS);
  timer.unref();

  return {
    append(e) {
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
      log[e.level](
        { component: e.component, objects: e.objects, data: e.data, actor, actorClient },
        e.message,
      );
      publish(topics.events, rec);
      if (++sinceprune >= pruneEvery) prune();
      return rec;
    },
    publishVmEvent(vmId, e) {
      publish(topics.vmEvents(vmId), e);
    },
    query: (q) => repo.query(q),
    prune,
    close: () => clearInterval(timer),
  };
}
