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
