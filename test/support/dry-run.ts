/**
 * What a dry run must leave alone, captured before and after it: the SQLite
 * database and its write-ahead log byte for byte, every file of the data dir
 * (path, size, mtime), the processes the in-process daemon started (the fake
 * VMs and their jobs), and what the daemon published under its topic root.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, lstatSync, existsSync } from 'node:fs';
import path from 'node:path';
import { createConditions } from '../../harness/conditions.js';
import type { TestDaemon } from '../../harness/daemon.js';

export interface Snapshot {
  /** sha256 of mvirt.db and mvirt.db-wal (absent: 'none'). */
  db: Record<string, string>;
  /** `path size mtimeMs` of every entry under the data dir, sorted. */
  files: string[];
  /** `pid args` of every descendant of this process (the daemon runs in it). */
  procs: string[];
}

const DB_FILES = ['mvirt.db', 'mvirt.db-wal'];

function hashOf(file: string): string {
  return existsSync(file) ? createHash('sha256').update(readFileSync(file)).digest('hex') : 'none';
}

function walk(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    const st = lstatSync(path.join(root, r));
    // The WAL index is shared memory every reader writes its read mark into:
    // its mtime follows reads (events.query, job.get), not changes.
    const mtime = e.name.endsWith('.db-shm') ? '-' : String(st.mtimeMs);
    out.push(`${r}${e.isDirectory() ? '/' : ''} ${st.size} ${mtime}`);
    if (e.isDirectory()) out.push(...walk(root, r));
  }
  return out.sort();
}

/** Descendants of this process: ps's own line (and its shell, if any) left out. */
function descendants(): string[] {
  const lines = execFileSync('ps', ['-e', '-o', 'pid=,ppid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.trim().match(/^(\d+)\s+(\d+)\s+(.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), args: m[3]! }));
  const mine = new Set([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const p of lines)
      if (!mine.has(p.pid) && mine.has(p.ppid)) {
        mine.add(p.pid);
        grew = true;
      }
  }
  return lines
    .filter((p) => p.pid !== process.pid && mine.has(p.pid) && !p.args.startsWith('ps -e'))
    .map((p) => `${p.pid} ${p.args}`)
    .sort();
}

export function snapshot(dataDir: string): Snapshot {
  return {
    db: Object.fromEntries(DB_FILES.map((f) => [f, hashOf(path.join(dataDir, f))])),
    files: walk(dataDir),
    procs: descendants(),
  };
}

export interface PublishWatch {
  /** `topic size` of each message under the root, in order (RPC requests left out). */
  readonly seen: string[];
  /**
   * Resolve once the daemon is quiet: the status publish that follows the
   * last VM state change (debounced) has gone out, so no host sample is on
   * its way into the metric roll-ups, and each of `warmed` (pool VMs) has
   * reported the exit of its warm-up exec, so no warm-up process is left.
   */
  quiet(warmed: readonly string[]): Promise<void>;
  stop(): Promise<void>;
}

/** Every message published under the daemon's root, watched in-process (on its own bus). */
export async function watchPublishes(d: TestDaemon, timeoutMs: number): Promise<PublishWatch> {
  const seen: string[] = [];
  const conditions = createConditions();
  const root = d.root;
  const stop = await d.daemon.broker.subscribe(`${root}/#`, (topic, payload) => {
    if (topic.startsWith(`${root}/rpc/`)) return;
    seen.push(`${topic} ${payload.length}`);
    conditions.notify();
  });
  const lastIndex = (re: RegExp): number => seen.findLastIndex((s) => re.test(s));
  return {
    seen,
    async quiet(warmed) {
      await conditions.until(
        () => {
          const vm = lastIndex(/\/vm\/[^/]+\/state /);
          if (vm >= 0 && lastIndex(new RegExp(`^${root}/status `)) < vm) return undefined;
          const exited = warmed.every((id) =>
            seen.some((s) => s.startsWith(`${root}/agent/${id}/up/exit `)),
          );
          return exited ? true : undefined;
        },
        'the daemon quiet',
        timeoutMs,
      );
    },
    stop,
  };
}

/** Runs `fn` (a dry run) and asserts the snapshot is the same after it; returns fn's result. */
export async function unchanged<T>(
  dataDir: string,
  fn: () => Promise<T>,
  what: string,
): Promise<T> {
  const before = snapshot(dataDir);
  const out = await fn();
  const after = snapshot(dataDir);
  assert.deepEqual(after.files, before.files, `${what}: the data dir changed`);
  assert.deepEqual(after.procs, before.procs, `${what}: processes changed`);
  assert.deepEqual(after.db, before.db, `${what}: the database changed`);
  return out;
}
