/**
 * The `volumes` and `vm_disks` tables: volume rows (the file is
 * `<data-dir>/volumes/<id>.<format>`, derived, never stored) and the disks each
 * VM boots with. The rules about who may attach what live in host/volumes/;
 * this is storage only.
 */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type { VolumeFormat, VolumeRecord, VolumeState } from '../../protocol/rpc.js';

export interface NewVolume {
  id: string;
  name: string;
  format: VolumeFormat;
  sizeBytes: number;
  usedBytes: number;
  backing: string | null;
}

export interface VmDisk {
  volume: string;
  readOnly: boolean;
}

interface VolumeRow {
  id: string;
  name: string;
  state: VolumeState;
  format: VolumeFormat;
  size_bytes: number;
  used_bytes: number;
  backing_id: string | null;
  created_at: string;
  updated_at: string;
}

interface DiskRow {
  vm_id: string;
  volume_id: string;
  read_only: number;
}

export function createVolumeRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    insert: db.prepare(`
      INSERT INTO volumes (id, name, state, format, size_bytes, used_bytes, backing_id, created_at, updated_at)
      VALUES (@id, @name, 'available', @format, @sizeBytes, @usedBytes, @backing, @now, @now)`),
    get: db.prepare(`SELECT * FROM volumes WHERE id = ?`),
    byName: db.prepare(`SELECT * FROM volumes WHERE name = ?`),
    all: db.prepare(`SELECT * FROM volumes ORDER BY name`),
    del: db.prepare(`DELETE FROM volumes WHERE id = ?`),
    setState: db.prepare(`UPDATE volumes SET state = ?, updated_at = ? WHERE id = ? AND state = ?`),
    setSize: db.prepare(
      `UPDATE volumes SET size_bytes = ?, used_bytes = ?, updated_at = ? WHERE id = ?`,
    ),
    setUsed: db.prepare(`UPDATE volumes SET used_bytes = ? WHERE id = ?`),
    clones: db.prepare(`SELECT id FROM volumes WHERE backing_id = ? ORDER BY name`).pluck(),
    totals: db.prepare(
      `SELECT COALESCE(SUM(size_bytes), 0) AS provisioned, COALESCE(SUM(used_bytes), 0) AS used FROM volumes`,
    ),
    attachments: db.prepare(
      `SELECT vm_id, volume_id, read_only FROM vm_disks WHERE volume_id = ? ORDER BY vm_id`,
    ),
    allAttachments: db.prepare(`SELECT vm_id, volume_id, read_only FROM vm_disks`),
    disksOf: db.prepare(
      `SELECT vm_id, volume_id, read_only FROM vm_disks WHERE vm_id = ? ORDER BY position`,
    ),
    addDisk: db.prepare(
      `INSERT INTO vm_disks (vm_id, position, volume_id, read_only) VALUES (?, ?, ?, ?)`,
    ),
    nextPosition: db
      .prepare(`SELECT COALESCE(MAX(position) + 1, 0) FROM vm_disks WHERE vm_id = ?`)
      .pluck(),
    removeDisk: db.prepare(`DELETE FROM vm_disks WHERE vm_id = ? AND volume_id = ?`),
  };

  type Attachment = VolumeRecord['attachedTo'][number];
  const toAttachment = (r: DiskRow): Attachment => ({ vm: r.vm_id, readOnly: r.read_only === 1 });
  const toVolume = (r: VolumeRow, attachedTo: Attachment[]): VolumeRecord => ({
    id: r.id,
    name: r.name,
    state: r.state,
    format: r.format,
    sizeBytes: r.size_bytes,
    usedBytes: r.used_bytes,
    backing: r.backing_id,
    attachedTo,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  });
  const withAttachments = (r: VolumeRow): VolumeRecord =>
    toVolume(r, (s.attachments.all(r.id) as DiskRow[]).map(toAttachment));

  return {
    /** Inside the caller's transaction when the file is already made (steps). */
    insert(v: NewVolume, now: string): VolumeRecord {
      s.insert.run({ ...v, now });
      owners.claim('volume', v.id);
      return withAttachments(s.get.get(v.id) as VolumeRow);
    },
    get(id: string): VolumeRecord | undefined {
      const r = s.get.get(id) as VolumeRow | undefined;
      return r && withAttachments(r);
    },
    /** By id, or else by name. */
    find(ref: string): VolumeRecord | undefined {
      const r = (s.get.get(ref) ?? s.byName.get(ref)) as VolumeRow | undefined;
      return r && withAttachments(r);
    },
    nameTaken(name: string): boolean {
      return s.byName.get(name) !== undefined;
    },
    list(): VolumeRecord[] {
      const by = new Map<string, Attachment[]>();
      for (const d of s.allAttachments.all() as DiskRow[]) {
        const l = by.get(d.volume_id) ?? [];
        l.push(toAttachment(d));
        by.set(d.volume_id, l);
      }
      for (const l of by.values()) l.sort((a, b) => a.vm.localeCompare(b.vm));
      return (s.all.all() as VolumeRow[]).map((r) => toVolume(r, by.get(r.id) ?? []));
    },
    /** Compare-and-set on the old state; false when it was not `from`. */
    setState(id: string, from: VolumeState, to: VolumeState, now: string): boolean {
      return s.setState.run(to, now, id, from).changes === 1;
    },
    setSize(id: string, sizeBytes: number, usedBytes: number, now: string): void {
      s.setSize.run(sizeBytes, usedBytes, now, id);
    },
    /** Usage is a measurement, not a change: it does not move updatedAt. */
    setUsed(id: string, usedBytes: number): void {
      s.setUsed.run(usedBytes, id);
    },
    clonesOf(id: string): string[] {
      return s.clones.all(id) as string[];
    },
    totals(): { provisioned: number; used: number } {
      return s.totals.get() as { provisioned: number; used: number };
    },
    delete(id: string): boolean {
      const gone = s.del.run(id).changes === 1;
      if (gone) owners.forget('volume', id);
      return gone;
    },
    /** A VM's disks in boot order. */
    disksOf(vmId: string): VmDisk[] {
      return (s.disksOf.all(vmId) as DiskRow[]).map((r) => ({
        volume: r.volume_id,
        readOnly: r.read_only === 1,
      }));
    },
    /** One more disk after the VM's others (hot-plug; the next boot keeps the order). */
    appendDisk(vmId: string, d: VmDisk): void {
      s.addDisk.run(vmId, s.nextPosition.get(vmId) as number, d.volume, d.readOnly ? 1 : 0);
    },
    /** false when the VM had no such disk. */
    removeDisk(vmId: string, volumeId: string): boolean {
      return s.removeDisk.run(vmId, volumeId).changes === 1;
    },
    /** Inside the VM's creation transaction. */
    addDisks(vmId: string, disks: readonly VmDisk[]): void {
      disks.forEach((d, i) => s.addDisk.run(vmId, i, d.volume, d.readOnly ? 1 : 0));
    },
  };
}

export type VolumeRepo = ReturnType<typeof createVolumeRepo>;
