/** The daemon's durable state: one SQLite file (DESIGN: `<data-dir>/mvirt.db`). */
import type { MvirtLogger } from '../log.js';
import { openDatabase, type Db, type OpenOptions } from './db.js';
import { createVmRepo, type VmRepo } from './vms.js';
import { createEventRepo, type EventRepo } from './events.js';
import { createJobRepo, type JobRepo } from './jobs.js';
import { createPoolRepo, type PoolRepo } from './pools.js';
import { createNetworkRepo, type NetworkRepo } from './network.js';
import { createMetricRepo, type MetricRepo } from './metrics.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import { createVolumeRepo, type VolumeRepo } from './volumes.js';
import { createSnapshotRepo, type SnapshotRepo } from './snapshots.js';

export interface Store {
  readonly db: Db;
  readonly vms: VmRepo;
  readonly events: EventRepo;
  readonly jobs: JobRepo;
  readonly pools: PoolRepo;
  readonly network: NetworkRepo;
  readonly metrics: MetricRepo;
  /** Owner labels of VMs, jobs and pools (scopes, host/auth/roles.ts). */
  readonly owners: OwnerRepo;
  readonly volumes: VolumeRepo;
  readonly snapshots: SnapshotRepo;
  close(): void;
}

export function createStore(file: string, log: MvirtLogger, opts: OpenOptions = {}): Store {
  const db = openDatabase(file, log, opts);
  const owners = createOwnerRepo(db);
  return {
    db,
    owners,
    vms: createVmRepo(db, owners),
    events: createEventRepo(db),
    jobs: createJobRepo(db, owners),
    pools: createPoolRepo(db, owners),
    network: createNetworkRepo(db),
    metrics: createMetricRepo(db),
    volumes: createVolumeRepo(db, owners),
    snapshots: createSnapshotRepo(db, owners),
    close: () => {
      if (db.open) db.close();
    },
  };
}

export type { Db } from './db.js';
export type { NewVm, StoredRuntime, VmRepo } from './vms.js';
export type { JobFinish, JobRepo, JobSpec, StoredChunk } from './jobs.js';
export type { Lease, NetworkRepo, SeedDocs } from './network.js';
export type { PoolDef, PoolRepo, StoredPool } from './pools.js';
export type { EventQuery, EventRepo, NewEvent, EventLevel } from './events.js';
export type { MetricRepo, RollupQuery, RollupRow } from './metrics.js';
export type { OwnerRepo } from './owners.js';
export type { NewVolume, VmDisk, VolumeRepo } from './volumes.js';
export type { NewSnapshot, SnapshotRepo, SnapshotVolumeRole, StoredSnapshot } from './snapshots.js';
export type { PendingRestore, RestoreState } from './vms.js';
export { SCHEMA_VERSION } from './migrations.js';
