/** The event log tables: events and their many-to-many links to objects. */
import type { Statement } from 'better-sqlite3';
import type { Db } from './db.js';
import type { EventRecord } from '../../protocol/rpc.js';

export type EventLevel = EventRecord['level'];

export interface NewEvent {
  at: number;
  level: EventLevel;
  component: string;
  message: string;
  objects: readonly string[];
  data?: unknown;
  /** Who acted (host/auth/actor.ts actorName) and with which client id. */
  actor?: string;
  actorClient?: string | null;
}

export interface EventQuery {
  objectId?: string;
  level?: EventLevel;
  /** Exact actor name (`user:alice`, `vm:<id>`, `mvirtd`, …). */
  actor?: string;
  /** Epoch milliseconds, inclusive. */
  since?: number;
  /** Epoch milliseconds, exclusive. */
  until?: number;
  limit?: number;
}

interface EventRow {
  id: number;
  at: number;
  level: EventLevel;
  component: string;
  message: string;
  data: string | null;
  objects: string | null;
  actor: string | null;
  actor_client: string | null;
}

export const DEFAULT_EVENT_LIMIT = 100;

/** Retention bounds: epoch-ms cut-offs and row counts, for audit records and for the rest. */
export interface PruneBounds {
  before: number;
  maxRows: number;
  auditBefore: number;
  auditMaxRows: number;
}

export function createEventRepo(db: Db) {
  const insertEvent = db.prepare(
    `INSERT INTO events (at, level, component, message, data, actor, actor_client)
     VALUES (?, ?, ?, ?, ?, ?, ?)`,
  );
  const insertObject = db.prepare(
    `INSERT OR IGNORE INTO event_objects (event_id, object_id) VALUES (?, ?)`,
  );
  const append = db.transaction((e: NewEvent): number => {
    const id = Number(
      insertEvent.run(
        e.at,
        e.level,
        e.component,
        e.message,
        e.data === undefined ? null : JSON.stringify(e.data),
        e.actor ?? null,
        e.actorClient ?? null,
      ).lastInsertRowid,
    );
    for (const o of new Set(e.objects)) insertObject.run(id, o);
    return id;
  });

  // Queries are built from a fixed set of clauses, so a small statement cache
  // keyed by the clause combination keeps them prepared.
  const cache = new Map<string, Statement<unknown[]>>();
  function statement(q: EventQuery): { sql: string; args: unknown[] } {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.objectId !== undefined) {
      where.push('e.id IN (SELECT event_id FROM event_objects WHERE object_id = ?)');
      args.push(q.objectId);
    }
    if (q.actor !== undefined) {
      where.push('e.actor = ?');
      args.push(q.actor);
    }
    if (q.level !== undefined) {
      where.push('e.level = ?');
      args.push(q.level);
    }
    if (q.since !== undefined) {
      where.push('e.at >= ?');
      args.push(q.since);
    }
    if (q.until !== undefined) {
      where.push('e.at < ?');
      args.push(q.until);
    }
    // With `since`, page forward from it; otherwise return the most recent ones.
    const order = q.since !== undefined ? 'ASC' : 'DESC';
    const sql = `
      SELECT e.*, (SELECT json_group_array(object_id) FROM event_objects o WHERE o.event_id = e.id) AS objects
      FROM events e ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY e.id ${order} LIMIT ?`;
    args.push(q.limit ?? DEFAULT_EVENT_LIMIT);
    return { sql, args };
  }

  // Audit records (who changed what) and the rest (state noise, and every
  // event a guest's messages cause) are kept apart: each class has its own
  // age and row bound, so no flood of guest events can push an audit record
  // out. Both DELETEs walk the events_level (level, id) index.
  const pruneOld = db.prepare(`DELETE FROM events WHERE level != 'audit' AND at < ?`);
  const pruneRows = db.prepare(
    `DELETE FROM events WHERE level != 'audit' AND id <= (SELECT id FROM events WHERE level != 'audit' ORDER BY id DESC LIMIT 1 OFFSET ?)`,
  );
  const pruneOldAudit = db.prepare(`DELETE FROM events WHERE level = 'audit' AND at < ?`);
  const pruneAuditRows = db.prepare(
    `DELETE FROM events WHERE level = 'audit' AND id <= (SELECT id FROM events WHERE level = 'audit' ORDER BY id DESC LIMIT 1 OFFSET ?)`,
  );
  const count = db.prepare<[], { audit: number; other: number }>(
    `SELECT COALESCE(SUM(level = 'audit'), 0) AS audit, COALESCE(SUM(level != 'audit'), 0) AS other FROM events`,
  );

  return {
    append: (e: NewEvent): number => append(e),
    /** Matching events in chronological order. */
    query(q: EventQuery = {}): EventRecord[] {
      const { sql, args } = statement(q);
      let st = cache.get(sql);
      if (!st) cache.set(sql, (st = db.prepare<unknown[]>(sql)));
      const rows = st.all(...args) as EventRow[];
      if (q.since === undefined) rows.reverse();
      return rows.map((r) => {
        const rec: EventRecord = {
          id: r.id,
          at: new Date(r.at).toISOString(),
          level: r.level,
          component: r.component,
          message: r.message,
          objects: r.objects ? (JSON.parse(r.objects) as string[]) : [],
        };
        if (r.data !== null) rec.data = JSON.parse(r.data) as unknown;
        if (r.actor !== null) rec.actor = r.actor;
        if (r.actor_client !== null) rec.actorClient = r.actor_client;
        return rec;
      });
    },
    /** Bounded retention, per class: audit records and the rest each by age and row count. */
    prune(r: PruneBounds): number {
      return db.transaction(
        () =>
          pruneOld.run(r.before).changes +
          pruneRows.run(Math.max(0, r.maxRows)).changes +
          pruneOldAudit.run(r.auditBefore).changes +
          pruneAuditRows.run(Math.max(0, r.auditMaxRows)).changes,
      )();
    },
    /** How many audit records and other events the store holds. */
    count: (): { audit: number; other: number } => count.get()!,
  };
}

export type EventRepo = ReturnType<typeof createEventRepo>;
