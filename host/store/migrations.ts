/**
 * Versioned schema migrations. The schema version lives in SQLite's
 * `user_version`; MIGRATIONS[i] brings the schema from version i to i+1.
 * Append only: never edit a migration that has shipped.
 */
import type Database from 'better-sqlite3';

type Migration = { name: string; up: (db: Database.Database) => void };

export const MIGRATIONS: readonly Migration[] = [
  {
    name: 'vms, runtime, events',
    up: (db) =>
      db.exec(`
        CREATE TABLE vms (
          id            TEXT PRIMARY KEY,
          name          TEXT NOT NULL UNIQUE,
          state         TEXT NOT NULL,
          state_reason  TEXT,
          vcpus         INTEGER NOT NULL,
          memory_mib    INTEGER NOT NULL,
          kind          TEXT NOT NULL,
          image         TEXT NOT NULL,
          backend       TEXT NOT NULL,
          network       TEXT NOT NULL,
          metadata      TEXT NOT NULL,
          created_at    TEXT NOT NULL,
          updated_at    TEXT NOT NULL,
          started_at    TEXT,
          boot          TEXT,
          agent_version TEXT
        );
        CREATE INDEX vms_state ON vms(state);

        CREATE TABLE vm_runtime (
          vm_id      TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
          backend    TEXT NOT NULL,
          pid        INTEGER NOT NULL,
          start_time INTEGER NOT NULL,
          accel      TEXT NOT NULL,
          sockets    TEXT NOT NULL,
          started_at TEXT NOT NULL
        );

        CREATE TABLE events (
          id        INTEGER PRIMARY KEY AUTOINCREMENT,
          at        INTEGER NOT NULL,
          level     TEXT NOT NULL,
          component TEXT NOT NULL,
          message   TEXT NOT NULL,
          data      TEXT
        );
        CREATE INDEX events_at ON events(at);
        CREATE INDEX events_level ON events(level, id);

        CREATE TABLE event_objects (
          event_id  INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
          object_id TEXT NOT NULL,
          PRIMARY KEY (object_id, event_id)
        ) WITHOUT ROWID;
        CREATE INDEX event_objects_event ON event_objects(event_id);
      `),
  },
  {
    name: 'jobs, job output, pools',
    up: (db) =>
      db.exec(`
        -- No foreign key to vms: a job outlives its ephemeral VM.
        CREATE TABLE jobs (
          id             TEXT PRIMARY KEY,
          vm_id          TEXT,
          target         TEXT NOT NULL,
          argv           TEXT NOT NULL,
          env            TEXT,
          cwd            TEXT,
          stdin          BLOB,
          timeout_ms     INTEGER,
          vcpus          INTEGER,
          memory_mib     INTEGER,
          state          TEXT NOT NULL,
          reason         TEXT,
          exit_code      INTEGER,
          signal         TEXT,
          oom_killed     INTEGER NOT NULL DEFAULT 0,
          created_at     TEXT NOT NULL,
          started_at     TEXT,
          finished_at    TEXT,
          updated_at     TEXT NOT NULL,
          next_seq       INTEGER NOT NULL DEFAULT 0,
          total_bytes    INTEGER NOT NULL DEFAULT 0,
          first_seq      INTEGER NOT NULL DEFAULT 0,
          dropped_chunks INTEGER NOT NULL DEFAULT 0,
          dropped_bytes  INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_state ON jobs(state, created_at);
        CREATE INDEX jobs_vm ON jobs(vm_id, created_at);

        CREATE TABLE job_output (
          job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
          seq    INTEGER NOT NULL,
          stream TEXT NOT NULL,
          data   BLOB NOT NULL,
          PRIMARY KEY (job_id, seq)
        ) WITHOUT ROWID;

        CREATE TABLE pools (
          name       TEXT PRIMARY KEY,
          image      TEXT NOT NULL,
          min        INTEGER NOT NULL,
          max        INTEGER NOT NULL,
          vcpus      INTEGER NOT NULL,
          memory_mib INTEGER NOT NULL,
          created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL
        );
      `),
  },
  {
    name: 'network leases, cloud-init seeds, agent tokens',
    up: (db) =>
      db.exec(`
        -- One address and MAC per bridged VM, from create to delete. UNIQUE is
        -- what makes "never handed out twice" hold whatever the code does.
        CREATE TABLE net_leases (
          vm_id      TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
          ip         TEXT NOT NULL UNIQUE,
          mac        TEXT NOT NULL UNIQUE,
          created_at TEXT NOT NULL
        );

        CREATE TABLE vm_seeds (
          vm_id          TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
          user_data      TEXT,
          meta_data      TEXT,
          network_config TEXT
        );

        -- SHA-256 of the running boot's agent token (guest TCP); the token itself
        -- is never stored. Gone with the runtime row, so an old token is refused.
        ALTER TABLE vm_runtime ADD COLUMN agent_token_hash TEXT;
      `),
  },
  {
    // Self-contained (touches no other table) so that it can be reordered
    // against migrations written on other branches at merge time.
    name: 'metric roll-ups',
    up: (db) =>
      db.exec(`
        -- One row per object (a VM id or 'host'), resolution and bucket. No
        -- foreign key to vms: a deleted VM's history ages out with the rest.
        CREATE TABLE metric_rollups (
          object_id       TEXT NOT NULL,
          step_s          INTEGER NOT NULL,
          t               INTEGER NOT NULL, -- bucket start, epoch seconds
          samples         INTEGER NOT NULL,
          cpu_avg         REAL NOT NULL,
          cpu_max         REAL NOT NULL,
          mem_used_mib    REAL NOT NULL,
          mem_total_mib   REAL NOT NULL,
          load1           REAL NOT NULL,
          disk_used_bytes REAL NOT NULL,
          net_rx_bytes    REAL NOT NULL,
          net_tx_bytes    REAL NOT NULL,
          PRIMARY KEY (object_id, step_s, t)
        ) WITHOUT ROWID;
        CREATE INDEX metric_rollups_age ON metric_rollups(step_s, t);
      `),
  },
  {
    // Issue 11: who acted (every event names its actor) and who owns what
    // (the scope a controller is confined to). Self-contained like the one
    // above, so it can be renumbered against other branches at merge time.
    name: 'event actors, object owners',
    up: (db) =>
      db.exec(`
        -- user:<name>, unix:<name>, anonymous, vm:<id> or mvirtd; NULL for
        -- events written before actors were recorded.
        ALTER TABLE events ADD COLUMN actor TEXT;
        ALTER TABLE events ADD COLUMN actor_client TEXT;
        CREATE INDEX events_actor ON events(actor, id);
        -- The owner label (a controller's scope) of each VM, job and pool
        -- created by a scoped controller. No foreign keys: a deleted object's
        -- row is dropped with it by the repo, and the table stays reorderable.
        CREATE TABLE owners (
          kind  TEXT NOT NULL,
          id    TEXT NOT NULL,
          owner TEXT NOT NULL,
          PRIMARY KEY (kind, id)
        ) WITHOUT ROWID;
      `),
  },
  {
    // Issue 13: volumes and the disks VMs boot with. Touches vms only through
    // a foreign key, so it can be renumbered against other branches.
    name: 'volumes, vm disks',
    up: (db) =>
      db.exec(`
        -- One row per volume file <data-dir>/volumes/<id>.<format>; the path is
        -- derived from id and format, never stored, never taken from a client.
        CREATE TABLE volumes (
          id         TEXT PRIMARY KEY,
          name       TEXT NOT NULL UNIQUE,
          state      TEXT NOT NULL,
          format     TEXT NOT NULL,
          size_bytes INTEGER NOT NULL,
          used_bytes INTEGER NOT NULL,
          backing_id TEXT REFERENCES volumes(id),
          created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL
        );
        CREATE INDEX volumes_backing ON volumes(backing_id);

        -- A VM's disks in boot order. Deleting the VM drops them; a volume
        -- cannot go while a VM lists it (no cascade on that side).
        CREATE TABLE vm_disks (
          vm_id     TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
          position  INTEGER NOT NULL,
          volume_id TEXT NOT NULL REFERENCES volumes(id),
          read_only INTEGER NOT NULL,
          PRIMARY KEY (vm_id, position),
          UNIQUE (vm_id, volume_id)
        );
        CREATE INDEX vm_disks_volume ON vm_disks(volume_id);
      `),
  },
  {
    // Issue 14: VM snapshots, suspend and forks.
    name: 'snapshots, suspend, restore',
    up: (db) =>
      db.exec(`
        -- One row per <data-dir>/snapshots/<id>/ (state file and manifest.json,
        -- paths derived from the id). 'saving' rows are incomplete: recovery
        -- deletes them with their folder. The source VM may be deleted later.
        CREATE TABLE snapshots (
          id             TEXT PRIMARY KEY,
          name           TEXT NOT NULL UNIQUE,
          state          TEXT NOT NULL,
          source_vm_id   TEXT NOT NULL,
          source_vm_name TEXT NOT NULL,
          image          TEXT NOT NULL,
          image_key      TEXT NOT NULL,
          backend        TEXT NOT NULL,
          vcpus          INTEGER NOT NULL,
          memory_mib     INTEGER NOT NULL,
          network        TEXT NOT NULL,
          generation     INTEGER NOT NULL,
          saved          TEXT,
          sha256         TEXT,
          created_at     TEXT NOT NULL,
          created_by     TEXT
        );
        -- The identity generation the VM's guest runs with (0: cold boot).
        ALTER TABLE vms ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
        -- The snapshot a fork was made from (no foreign key: it may be deleted).
        ALTER TABLE vms ADD COLUMN restored_from TEXT;
        -- JSON RestoreInfo of the last restore or resume.
        ALTER TABLE vms ADD COLUMN restore_info TEXT;
        -- JSON of what the next start resumes from: a suspended VM's saved
        -- state ({saved, hashes}) or a fork's snapshot; NULL otherwise.
        ALTER TABLE vms ADD COLUMN pending_restore TEXT;
      `),
  },
  {
    // Issue 14: fast pools, whose members are forks of a snapshot.
    name: 'pools from snapshots',
    up: (db) =>
      db.exec(`
        -- 1: members fork mvirtd's template snapshot of the pool's image and size.
        ALTER TABLE pools ADD COLUMN snapshot INTEGER NOT NULL DEFAULT 0;
        -- Members fork this VM snapshot (its id; snapshot.delete refuses it
        -- while a pool names it). No foreign key: a template may still go.
        ALTER TABLE pools ADD COLUMN from_snapshot TEXT;
      `),
  },
  {
    // Issue 14: snapshots of VMs with volumes.
    name: 'snapshot disks',
    up: (db) =>
      db.exec(`
        -- JSON SnapshotDisk[]: the source's volume disks, as the manifest lists them.
        ALTER TABLE snapshots ADD COLUMN disks TEXT;
        -- Volumes a snapshot keeps as they are: a read-only disk its forks
        -- attach ('shared'), or the template a copied overlay reads through
        -- ('template'). host/volumes/ refuses to delete, restore, resize or
        -- attach such a volume read-write; the rows go with the snapshot's.
        CREATE TABLE snapshot_volumes (
          snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
          volume_id   TEXT NOT NULL REFERENCES volumes(id),
          role        TEXT NOT NULL,
          PRIMARY KEY (snapshot_id, volume_id)
        ) WITHOUT ROWID;
        CREATE INDEX snapshot_volumes_volume ON snapshot_volumes(volume_id);
      `),
  },
  {
    // Issue 17: job.run {stdinOpen}: the job's stdin stays open for job.stdin.
    name: 'job stdin open',
    up: (db) => db.exec(`ALTER TABLE jobs ADD COLUMN stdin_open INTEGER NOT NULL DEFAULT 0;`),
  },
  {
    // Issue 17: job.run {encoding: 'bytes'}: output passed on as base64.
    name: 'job output encoding',
    up: (db) => db.exec(`ALTER TABLE jobs ADD COLUMN bytes_out INTEGER NOT NULL DEFAULT 0;`),
  },
  {
    // Issue 17: job.run {limits} (the job's cgroup in the guest) and what it used.
    name: 'job limits and usage',
    up: (db) =>
      db.exec(`
        ALTER TABLE jobs ADD COLUMN limits TEXT;
        ALTER TABLE jobs ADD COLUMN cpu_ms INTEGER;
        ALTER TABLE jobs ADD COLUMN peak_memory_bytes INTEGER;`),
  },
  {
    // Issue 17: job.run {tty, cols, rows}: JSON {cols, rows} of the job's pty.
    name: 'job tty',
    up: (db) => db.exec(`ALTER TABLE jobs ADD COLUMN tty TEXT;`),
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Run pending migrations, each in its own transaction with its version bump. */
export function migrate(db: Database.Database): { from: number; to: number } {
  const from = db.pragma('user_version', { simple: true }) as number;
  if (from > MIGRATIONS.length) {
    throw new Error(
      `database schema version ${from} is newer than this mvirtd (${MIGRATIONS.length}); upgrade mvirtd`,
    );
  }
  for (let v = from; v < MIGRATIONS.length; v++) {
    const m = MIGRATIONS[v]!;
    db.transaction(() => {
      m.up(db);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return { from, to: MIGRATIONS.length };
}
