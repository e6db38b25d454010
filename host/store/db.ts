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
}
