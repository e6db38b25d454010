/**
 * The `snapshots` table: one row per VM snapshot folder
 * `<data-dir>/snapshots/<id>/` (paths derived from the id, never stored).
 * A row is `saving` until its files are complete; host/snapshots/ owns the
 * rules, this is storage only.
 */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type {
  NetworkSpec,
  SnapshotDisk,
  SnapshotRecord,
  SnapshotState,
} from '../../protocol/rpc.js';
import type { SavedState } from '../hypervisors/types.js';

export interface NewSnapshot {
  id: string;
  name: string;
  sourceVm: string;
  sourceName: string;
  image: string;
  imageKey: string;
  backend: string;
  vcpus: number;
  memoryMiB: number;
  network: NetworkSpec;
  /** The source's identity generation when saved: forks get the next one. */
  generation: number;
  createdBy: string | null;
}

/**
 * Why a snapshot keeps a volume as it is: `shared`, a read-only disk its
 * forks attach; `template`, the template a copied overlay reads through.
 */
export type SnapshotVolumeRole = 'shared' | 'template';

/** Everything a restore needs that the public record leaves out. */
export interface StoredSnapshot extends SnapshotRecord {
  imageKey: string;
  generation: number;
  saved: SavedState | null;
  sha256: string | null;
}

interface Row {
  id: string;
  name: string;
  state: SnapshotState;
  source_vm_id: string;
  source_vm_name: string;
  image: string;
  image_key: string;
  backend: string;
  vcpus: number;
  memory_mib: number;
  network: string;
  generation: number;
  saved: string | null;
  sha256: string | null;
  disks: string | null;
  created_at: string;
  created_by: string | null;
}

function toStored(r: Row): StoredSnapshot {
  const saved = r.saved === null ? null : (JSON.parse(r.saved) as SavedState);
  return {
    id: r.id,
    name: r.name,
    state: r.state,
    source: { vm: r.source_vm_id, name: r.source_vm_name },
    image: r.image,
    backend: r.backend,
    vcpus: r.vcpus,
    memoryMiB: r.memory_mib,
    network: JSON.parse(r.network) as NetworkSpec,
    hypervisor: { version: saved?.version ?? '', machine: saved?.machine ?? '' },
    bytes: saved?.bytes ?? 0,
    ...(r.disks !== null ? { disks: JSON.parse(r.disks) as SnapshotDisk[] } : {}),
    createdAt: r.created_at,
    ...(r.created_by !== null ? { createdBy: r.created_by } : {}),
    imageKey: r.image_key,
    generation: r.generation,
    saved,
    sha256: r.sha256,
  };
}

/** The public record of a stored snapshot. */
export const publicSnapshot = (s: StoredSnapshot): SnapshotRecord => {
  const { imageKey: _k, generation: _g, saved: _s, sha256: _h, ...rec } = s;
  return rec;
};

export function createSnapshotRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    insert: db.prepare(`
      INSERT INTO snapshots (id, name, state, source_vm_id, source_vm_name, image, image_key,
        backend, vcpus, memory_mib, network, generation, created_at, created_by)
      VALUES (@id, @name, 'saving', @sourceVm, @sourceName, @image, @imageKey, @backend, @vcpus,
        @memoryMiB, @network, @generation, @now, @createdBy)`),
    get: db.prepare(`SELECT * FROM snapshots WHERE id = ?`),
    byName: db.prepare(`SELECT * FROM snapshots WHERE name = ?`),
    all: db.prepare(`SELECT * FROM snapshots ORDER BY created_at, id`),
    bySource: db.prepare(`SELECT * FROM snapshots WHERE source_vm_id = ? ORDER BY created_at, id`),
    saving: db.prepare(`SELECT id FROM snapshots WHERE state = 'saving'`).pluck(),
    ready: db.prepare(
      `UPDATE snapshots SET state = 'ready', saved = ?, sha256 = ?, disks = ? WHERE id = ? AND state = 'saving'`,
    ),
    del: db.prepare(`DELETE FROM snapshots WHERE id = ?`),
    keep: db.prepare(
      `INSERT INTO snapshot_volumes (snapshot_id, volume_id, role) VALUES (?, ?, ?)`,
    ),
    keeping: db.prepare(`
      SELECT s.name AS snapshot, k.role AS role FROM snapshot_volumes k
      JOIN snapshots s ON s.id = k.snapshot_id WHERE k.volume_id = ? ORDER BY s.name`),
  };
  return {
    insert(snap: NewSnapshot, now: string): void {
      s.insert.run({ ...snap, network: JSON.stringify(snap.network), now });
      owners.claim('snapshot', snap.id);
    },
    get(id: string): StoredSnapshot | undefined {
      const r = s.get.get(id) as Row | undefined;
      return r && toStored(r);
    },
    /** By id first, then by name. */
    find(ref: string): StoredSnapshot | undefined {
      const r = (s.get.get(ref) ?? s.byName.get(ref)) as Row | undefined;
      return r && toStored(r);
    },
    nameTaken(name: string): boolean {
      return s.byName.get(name) !== undefined || s.get.get(name) !== undefined;
    },
    list(sourceVm?: string): StoredSnapshot[] {
      const rows = (sourceVm === undefined ? s.all.all() : s.bySource.all(sourceVm)) as Row[];
      return rows.map(toStored);
    },
    /** Rows a crash left half-written (recovery removes them and their folders). */
    saving(): string[] {
      return s.saving.all() as string[];
    },
    /**
     * saving → ready once the files are complete; false when the row is gone
     * or was ready. `hashes`: JSON of each file's sha256 (the manifest is the
     * record restores read; this is its copy in the database); `disks`: the
     * source's volume disks (none: left out of the record).
     */
    markReady(
      id: string,
      saved: SavedState,
      hashes: string,
      disks: readonly SnapshotDisk[] = [],
    ): boolean {
      const d = disks.length > 0 ? JSON.stringify(disks) : null;
      return s.ready.run(JSON.stringify(saved), hashes, d, id).changes === 1;
    },
    /**
     * Volumes the snapshot keeps as they are (SnapshotVolumeRole); the rows
     * go when the snapshot's row does.
     */
    keep(id: string, volumes: readonly { volume: string; role: SnapshotVolumeRole }[]): void {
      for (const v of volumes) s.keep.run(id, v.volume, v.role);
    },
    /** The snapshots (by name) that keep this volume as it is, and why. */
    keeping(volumeId: string): { snapshot: string; role: SnapshotVolumeRole }[] {
      return s.keeping.all(volumeId) as { snapshot: string; role: SnapshotVolumeRole }[];
    },
    delete(id: string): boolean {
      const gone = s.del.run(id).changes === 1;
      if (gone) owners.forget('snapshot', id);
      return gone;
    },
  };
}

export type SnapshotRepo = ReturnType<typeof createSnapshotRepo>;
