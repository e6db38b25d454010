/** The `vms` and `vm_runtime` tables: prepared statements and row ↔ record mapping. */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type { NetworkSpec, VmKind, VmRecord, VmState } from '../../protocol/rpc.js';
import { INACTIVE_VM_STATES } from '../../protocol/states.js';
import type { SavedState, VmRuntime } from '../hypervisors/types.js';

/** What vm.create stores: the definition part of the public VM record. */
export type NewVm = Pick<
  VmRecord,
  'id' | 'name' | 'vcpus' | 'memoryMiB' | 'kind' | 'image' | 'backend' | 'network' | 'metadata'
>;

/**
 * What a VM's next start resumes from instead of booting: the snapshot a fork
 * was made from, or the state file its suspend wrote in its folder.
 */
export type PendingRestore =
  | { from: 'snapshot'; snapshot: string }
  | { from: 'suspend'; saved: SavedState; hashes: Record<string, string> };

/** A VM's restore facts (not in its public record except restoredFrom/restore). */
export interface RestoreState {
  generation: number;
  pending: PendingRestore | null;
}

export interface StoredRuntime extends VmRuntime {
  vmId: string;
  startedAt: string;
}

interface VmRow {
  id: string;
  name: string;
  state: VmState;
  state_reason: string | null;
  vcpus: number;
  memory_mib: number;
  kind: VmKind;
  image: string;
  backend: string;
  network: string;
  metadata: string;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  boot: string | null;
  agent_version: string | null;
  pid: number | null;
  accel: string | null;
  ip: string | null;
  mac: string | null;
  /** Bit set of the seed's documents (1 user-data, 2 meta-data, 4 network-config); null: no seed. */
  seed: number | null;
  /** JSON array of `<volume id>:<0|1 read-only>` in boot order; '[]' without disks. */
  disks: string;
  generation: number;
  restored_from: string | null;
  restore_info: string | null;
  pending_restore: string | null;
}

interface RuntimeRow {
  vm_id: string;
  backend: string;
  pid: number;
  start_time: number;
  accel: string;
  sockets: string;
  started_at: string;
}

// Most VMs carry the default network and no metadata: skip JSON.parse for those
// (vm.list over 10,000 rows is a benchmark target).
const EMPTY_META = '{}';
const parseNetwork = (s: string): NetworkSpec =>
  s === '{"mode":"none"}' ? { mode: 'none' } : (JSON.parse(s) as NetworkSpec);
const parseMeta = (s: string): Record<string, string> =>
  s === EMPTY_META ? {} : (JSON.parse(s) as Record<string, string>);

export function rowToRecord(r: VmRow): VmRecord {
  const rec: VmRecord = {
    id: r.id,
    name: r.name,
    state: r.state,
    vcpus: r.vcpus,
    memoryMiB: r.memory_mib,
    kind: r.kind,
    image: r.image,
    backend: r.backend,
    network: parseNetwork(r.network),
    metadata: parseMeta(r.metadata),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
  if (r.state_reason !== null) rec.stateReason = r.state_reason;
  if (r.started_at !== null) rec.startedAt = r.started_at;
  if (r.pid !== null) rec.pid = r.pid;
  if (r.accel !== null) rec.accel = r.accel;
  if (r.ip !== null) rec.ip = r.ip;
  if (r.mac !== null) rec.mac = r.mac;
  if (r.seed !== null)
    rec.cloudInit = {
      userData: (r.seed & 1) !== 0,
      metaData: (r.seed & 2) !== 0,
      networkConfig: (r.seed & 4) !== 0,
    };
  if (r.boot !== null) rec.boot = JSON.parse(r.boot) as VmRecord['boot'];
  if (r.agent_version !== null) rec.agentVersion = r.agent_version;
  if (r.disks !== '[]') {
    // The serial is the volume id (vol-<12 hex>: 16 bytes, within virtio-blk's 20).
    rec.disks = (JSON.parse(r.disks) as string[]).map((d) => {
      const [volume, ro] = d.split(':') as [string, string];
      return { volume, readOnly: ro === '1', serial: volume };
    });
  }
  if (r.restored_from !== null) rec.restoredFrom = r.restored_from;
  if (r.restore_info !== null) rec.restore = JSON.parse(r.restore_info) as VmRecord['restore'];
  return rec;
}

const SELECT = `
  SELECT v.*, r.pid AS pid, r.accel AS accel, l.ip AS ip, l.mac AS mac,
    CASE WHEN s.vm_id IS NULL THEN NULL ELSE
      (s.user_data IS NOT NULL) | ((s.meta_data IS NOT NULL) << 1) | ((s.network_config IS NOT NULL) << 2)
    END AS seed,
    (SELECT json_group_array(d.volume_id || ':' || d.read_only)
       FROM (SELECT volume_id, read_only FROM vm_disks WHERE vm_id = v.id ORDER BY position) d
    ) AS disks
  FROM vms v LEFT JOIN vm_runtime r ON r.vm_id = v.id
    LEFT JOIN net_leases l ON l.vm_id = v.id
    LEFT JOIN vm_seeds s ON s.vm_id = v.id`;

export function createVmRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    insert: db.prepare(`
      INSERT INTO vms (id, name, state, vcpus, memory_mib, kind, image, backend, network,
                       metadata, created_at, updated_at)
      VALUES (@id, @name, 'stopped', @vcpus, @memoryMiB, @kind, @image, @backend, @network,
              @metadata, @now, @now)`),
    byId: db.prepare(`${SELECT} WHERE v.id = ?`),
    byName: db.prepare(`${SELECT} WHERE v.name = ?`),
    all: db.prepare(`${SELECT} ORDER BY v.created_at, v.id`),
    byState: db.prepare(`${SELECT} WHERE v.state = ? ORDER BY v.created_at, v.id`),
    // The key is bound as a JSON path: metadata keys such as `mvirt.pool` contain dots.
    tagged: db.prepare(
      `${SELECT} WHERE json_extract(v.metadata, @path) IS NOT NULL
         AND (@value IS NULL OR json_extract(v.metadata, @path) = @value)
       ORDER BY v.created_at, v.id`,
    ),
    setState: db.prepare(
      `UPDATE vms SET state = ?, state_reason = ?, updated_at = ? WHERE id = ? AND state = ?`,
    ),
    // A new start: the last boot's and the last restore's facts no longer hold.
    setStarted: db.prepare(
      `UPDATE vms SET started_at = ?, boot = NULL, restore_info = NULL, updated_at = ? WHERE id = ?`,
    ),
    setAgent: db.prepare(`UPDATE vms SET boot = ?, agent_version = ?, updated_at = ? WHERE id = ?`),
    del: db.prepare(`DELETE FROM vms WHERE id = ?`),
    setRestoredFrom: db.prepare(`UPDATE vms SET restored_from = ? WHERE id = ?`),
    restoreState: db.prepare(`SELECT generation, pending_restore FROM vms WHERE id = ?`),
    setPending: db.prepare(`UPDATE vms SET pending_restore = ?, updated_at = ? WHERE id = ?`),
    setRestored: db.prepare(
      `UPDATE vms SET generation = ?, restore_info = ?, pending_restore = NULL, updated_at = ? WHERE id = ?`,
    ),
    setRestoreInfo: db.prepare(`UPDATE vms SET restore_info = ?, updated_at = ? WHERE id = ?`),
    counts: db.prepare(`SELECT state, COUNT(*) AS n FROM vms GROUP BY state`),
    allocated: db.prepare(`
      SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS mem
      FROM vms WHERE state NOT IN (${INACTIVE_VM_STATES.map((s) => `'${s}'`).join(', ')})`),
    putRuntime: db.prepare(`
      INSERT OR REPLACE INTO vm_runtime (vm_id, backend, pid, start_time, accel, sockets, started_at)
      VALUES (?, ?, ?, ?, ?, ?, ?)`),
    getRuntime: db.prepare(`SELECT * FROM vm_runtime WHERE vm_id = ?`),
    allRuntime: db.prepare(`SELECT * FROM vm_runtime`),
    delRuntime: db.prepare(`DELETE FROM vm_runtime WHERE vm_id = ?`),
  };
  const toRuntime = (r: RuntimeRow): StoredRuntime => ({
    vmId: r.vm_id,
    backend: r.backend,
    pid: r.pid,
    startTime: r.start_time,
    accel: r.accel,
    sockets: JSON.parse(r.sockets) as Record<string, string>,
    startedAt: r.started_at,
  });

  return {
    insert(vm: NewVm, now = new Date().toISOString()): void {
      s.insert.run({
        ...vm,
        network: JSON.stringify(vm.network),
        metadata: JSON.stringify(vm.metadata),
        now,
      });
      owners.claim('vm', vm.id);
    },
    get(id: string): VmRecord | undefined {
      const r = s.byId.get(id) as VmRow | undefined;
      return r && rowToRecord(r);
    },
    /** By id first, then by name (PROTOCOL: `vm` accepts either). */
    find(ref: string): VmRecord | undefined {
      const r = (s.byId.get(ref) ?? s.byName.get(ref)) as VmRow | undefined;
      return r && rowToRecord(r);
    },
    nameTaken(name: string): boolean {
      return s.byName.get(name) !== undefined || s.byId.get(name) !== undefined;
    },
    list(state?: VmState): VmRecord[] {
      const rows = (state ? s.byState.all(state) : s.all.all()) as VmRow[];
      return rows.map(rowToRecord);
    },
    /** VMs whose metadata has `key` (equal to `value` when given), without reading the others. */
    tagged(key: string, value?: string): VmRecord[] {
      const rows = s.tagged.all({ path: `$.${JSON.stringify(key)}`, value: value ?? null });
      return (rows as VmRow[]).map(rowToRecord);
    },
    /** Compare-and-set on the state: false when the VM is no longer in `from`. */
    setState(id: string, from: VmState, to: VmState, reason: string | null, now: string): boolean {
      return s.setState.run(to, reason, now, id, from).changes === 1;
    },
    setStarted(id: string, now: string): void {
      s.setStarted.run(now, now, id);
    },
    setAgent(id: string, boot: VmRecord['boot'], agentVersion: string, now: string): void {
      s.setAgent.run(boot === undefined ? null : JSON.stringify(boot), agentVersion, now, id);
    },
    delete(id: string): boolean {
      const gone = s.del.run(id).changes === 1;
      if (gone) owners.forget('vm', id);
      return gone;
    },
    countByState(): Partial<Record<VmState, number>> {
      const out: Partial<Record<VmState, number>> = {};
      for (const r of s.counts.all() as { state: VmState; n: number }[]) out[r.state] = r.n;
      return out;
    },
    /** Resources held by VMs that are not stopped or failed. */
    allocated(): { vms: number; vcpus: number; memoryMiB: number } {
      const r = s.allocated.get() as { n: number; vcpus: number; mem: number };
      return { vms: r.n, vcpus: r.vcpus, memoryMiB: r.mem };
    },
    putRuntime(vmId: string, rt: VmRuntime, startedAt: string): void {
      s.putRuntime.run(
        vmId,
        rt.backend,
        rt.pid,
        rt.startTime,
        rt.accel,
        JSON.stringify(rt.sockets),
        startedAt,
      );
    },
    getRuntime(vmId: string): StoredRuntime | undefined {
      const r = s.getRuntime.get(vmId) as RuntimeRow | undefined;
      return r && toRuntime(r);
    },
    allRuntime(): StoredRuntime[] {
      return (s.allRuntime.all() as RuntimeRow[]).map(toRuntime);
    },
    deleteRuntime(vmId: string): void {
      s.delRuntime.run(vmId);
    },
    /** A fork: the snapshot it was made from and resumes from at its first start. */
    markFork(id: string, snapshot: string, now: string): void {
      s.setRestoredFrom.run(snapshot, id);
      s.setPending.run(JSON.stringify({ from: 'snapshot', snapshot }), now, id);
    },
    restoreState(id: string): RestoreState | undefined {
      const r = s.restoreState.get(id) as
        { generation: number; pending_restore: string | null } | undefined;
      if (!r) return undefined;
      const pending =
        r.pending_restore === null ? null : (JSON.parse(r.pending_restore) as PendingRestore);
      return { generation: r.generation, pending };
    },
    setPendingRestore(id: string, pending: PendingRestore | null, now: string): void {
      s.setPending.run(pending === null ? null : JSON.stringify(pending), now, id);
    },
    /** Resumed from saved state: its new generation, what the restore did; nothing pending. */
    setRestored(id: string, generation: number, info: VmRecord['restore'], now: string): void {
      s.setRestored.run(generation, JSON.stringify(info), now, id);
    },
    /** The agent's part of the restore (clock, entropy, identity) once it reported. */
    setRestoreInfo(id: string, info: VmRecord['restore'], now: string): void {
      s.setRestoreInfo.run(JSON.stringify(info), now, id);
    },
  };
}

export type VmRepo = ReturnType<typeof createVmRepo>;
