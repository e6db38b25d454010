/**
 * Owner labels of VMs, jobs and pools (host/auth/roles.ts: a scoped
 * controller's label). The broker asks for an object's owner on every delivery
 * to a scoped controller, so answers are cached in memory: an owner never
 * changes once an object exists, and ids are never reused.
 */
import { currentOwner } from '../auth/actor.js';
import type { ObjectKind } from '../auth/roles.js';
import type { Db } from './db.js';

/** Cached answers beyond this are dropped wholesale (a cache, not the record). */
const MAX_CACHED = 100_000;

export function createOwnerRepo(db: Db) {
  const s = {
    insert: db.prepare(`INSERT OR REPLACE INTO owners (kind, id, owner) VALUES (?, ?, ?)`),
    get: db.prepare(`SELECT owner FROM owners WHERE kind = ? AND id = ?`).pluck(),
    del: db.prepare(`DELETE FROM owners WHERE kind = ? AND id = ?`),
  };
  const cache = new Map<string, string | null>();
  const remember = (key: string, owner: string | null): void => {
    if (cache.size >= MAX_CACHED) cache.clear();
    cache.set(key, owner);
  };
  return {
    /** Label a new object with the acting controller's scope (nothing when unscoped). */
    claim(kind: ObjectKind, id: string): void {
      const owner = currentOwner();
      if (owner !== null) s.insert.run(kind, id, owner);
      remember(`${kind}:${id}`, owner);
    },
    set(kind: ObjectKind, id: string, owner: string): void {
      s.insert.run(kind, id, owner);
      remember(`${kind}:${id}`, owner);
    },
    /** The object's owner label, or null when it has none (or does not exist). */
    get(kind: ObjectKind, id: string): string | null {
      const key = `${kind}:${id}`;
      const hit = cache.get(key);
      if (hit !== undefined) return hit;
      const owner = (s.get.get(kind, id) as string | undefined) ?? null;
      // Only labelled answers are cached: an unknown id may be created later.
      if (owner !== null) remember(key, owner);
      return owner;
    },
    forget(kind: ObjectKind, id: string): void {
      s.del.run(kind, id);
      cache.delete(`${kind}:${id}`);
    },
  };
}

export type OwnerRepo = ReturnType<typeof createOwnerRepo>;
