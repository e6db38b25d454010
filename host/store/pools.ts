/** The `pools` table: pool definitions. Their VMs are ordinary VM rows tagged with the pool. */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type { PoolRecord } from '../../protocol/rpc.js';

/** What pool.set stores (`problem` and the VM counts are live, never stored). */
export type PoolDef = Omit<PoolRecord, 'vms' | 'createdAt' | 'updatedAt' | 'problem'>;
export type StoredPool = Omit<PoolRecord, 'vms' | 'problem'>;

interface PoolRow {
  name: string;
  image: string;
  min: number;
  max: number;
  vcpus: number;
  memory_mib: number;
  snapshot: number;
  from_snapshot: string | null;
  created_at: string;
  updated_at: string;
}

const toPool = (r: PoolRow): StoredPool => ({
  name: r.name,
  image: r.image,
  min: r.min,
  max: r.max,
  vcpus: r.vcpus,
  memoryMiB: r.memory_mib,
  ...(r.snapshot === 1 ? { snapshot: true as const } : {}),
  ...(r.from_snapshot !== null ? { fromSnapshot: r.from_snapshot } : {}),
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

export function createPoolRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    upsert: db.prepare(`
      INSERT INTO pools (name, image, min, max, vcpus, memory_mib, snapshot, from_snapshot,
        created_at, updated_at)
      VALUES (@name, @image, @min, @max, @vcpus, @memoryMiB, @snapshot, @fromSnapshot, @now, @now)
      ON CONFLICT(name) DO UPDATE SET image = excluded.image, min = excluded.min,
        max = excluded.max, vcpus = excluded.vcpus, memory_mib = excluded.memory_mib,
        snapshot = excluded.snapshot, from_snapshot = excluded.from_snapshot,
        updated_at = excluded.updated_at`),
    get: db.prepare(`SELECT * FROM pools WHERE name = ?`),
    all: db.prepare(`SELECT * FROM pools ORDER BY name`),
    del: db.prepare(`DELETE FROM pools WHERE name = ?`),
  };
  return {
    put(def: PoolDef, now: string): StoredPool {
      const isNew = s.get.get(def.name) === undefined;
      s.upsert.run({
        name: def.name,
        image: def.image,
        min: def.min,
        max: def.max,
        vcpus: def.vcpus,
        memoryMiB: def.memoryMiB,
        snapshot: def.snapshot ? 1 : 0,
        fromSnapshot: def.fromSnapshot ?? null,
        now,
      });
      if (isNew) owners.claim('pool', def.name);
      return toPool(s.get.get(def.name) as PoolRow);
    },
    get(name: string): StoredPool | undefined {
      const r = s.get.get(name) as PoolRow | undefined;
      return r && toPool(r);
    },
    list(): StoredPool[] {
      return (s.all.all() as PoolRow[]).map(toPool);
    },
    /** The pools whose members fork snapshot `id` (snapshot.delete refuses it meanwhile). */
    usingSnapshot(id: string): string[] {
      return (s.all.all() as PoolRow[]).filter((r) => r.from_snapshot === id).map((r) => r.name);
    },
    delete(name: string): boolean {
      const gone = s.del.run(name).changes === 1;
      if (gone) owners.forget('pool', name);
      return gone;
    },
  };
}

export type PoolRepo = ReturnType<typeof createPoolRepo>;
