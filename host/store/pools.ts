/** The `pools` table: pool definitions. Their VMs are ordinary VM rows tagged with the pool. */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type { PoolRecord } from '../../protocol/rpc.js';

export type PoolDef = Omit<PoolRecord, 'vms' | 'createdAt' | 'updatedAt'>;
export type StoredPool = Omit<PoolRecord, 'vms'>;

interface PoolRow {
  name: string;
  image: string;
  min: number;
  max: number;
  vcpus: number;
  memory_mib: number;
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
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

export function createPoolRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    upsert: db.prepare(`
      INSERT INTO pools (name, image, min, max, vcpus, memory_mib, created_at, updated_at)
      VALUES (@name, @image, @min, @max, @vcpus, @memoryMiB, @now, @now)
      ON CONFLICT(name) DO UPDATE SET image = excluded.image, min = excluded.min,
        max = excluded.max, vcpus = excluded.vcpus, memory_mib = excluded.memory_mib,
        updated_at = excluded.updated_at`),
    get: db.prepare(`SELECT * FROM pools WHERE name = ?`),
    all: db.prepare(`SELECT * FROM pools ORDER BY name`),
    del: db.prepare(`DELETE FROM pools WHERE name = ?`),
  };
  return {
    put(def: PoolDef, now: string): StoredPool {
      const isNew = s.get.get(def.name) === undefined;
      s.upsert.run({ ...def, now });
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
    delete(name: string): boolean {
      const gone = s.del.run(name).changes === 1;
      if (gone) owners.forget('pool', name);
      return gone;
    },
  };
}

export type PoolRepo = ReturnType<typeof createPoolRepo>;
