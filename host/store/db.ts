/**
 * Opening the SQLite database. Pragmas are connection settings, not file
 * settings (except journal_mode), so they are applied on EVERY open:
 * better-sqlite3 opens later connections with synchronous=NORMAL, which in WAL
 * mode may lose the last acknowledged transactions on power loss.
 */
import Database from 'better-sqlite3';
import type { MvirtLogger } from '../log.js';
import { MvirtError } from '../../protocol/errors.js';
import { migrate } from './migrations.js';

export type Db = Database.Database;

export interface OpenOptions {
  /** Milliseconds a writer waits for a lock held by another connection. */
  busyTimeoutMs?: number;
  readonly?: boolean;
}

export function openDatabase(file: string, log: MvirtLogger, opts: OpenOptions = {}): Db {
  let db: Db;
  try {
    db = new Database(file, { readonly: opts.readonly ?? false });
  } catch (err) {
    throw new MvirtError('CONFIG_INVALID', `cannot open database ${file}: ${String(err)}`, {
      cause: err,
    });
  }
  applyPragmas(db, opts);
  if (!opts.readonly) {
    const { from, to } = migrate(db);
    if (from !== to) log.info({ file, from, to }, 'database migrated');
  }
  return db;
}

export function applyPragmas(db: Db, opts: OpenOptions = {}): void {
  db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(opts.busyTimeoutMs ?? 5000))}`);
  if (!opts.readonly) db.pragma('journal_mode = WAL');
  // FULL: a committed transaction survives power loss, not only a process crash.
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma(`cache_size = ${-CACHE_KIB}`);
}

/**
 * SQLite's page cache (KiB). better-sqlite3 builds SQLite with 16 MB, and a
 * guest's 30 s output flood (60 MiB of chunks through the job output tables)
 * filled it: mvirtd's RSS grew 26 MiB of which the V8 heap and Buffers were
 * 10 (test/integration/guest-flood.test.ts with /metrics sampled,
 * 2026-12-08; issue 12 bounds a flood at 32). The rows mvirtd reads back
 * often are few and small; output pages are written once and read rarely,
 * and then from the OS's file cache.
 */
export const CACHE_KIB = 4096;
