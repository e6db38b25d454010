/**
 * What a dry run must leave alone, captured byte for byte: the SQLite file
 * (and its WAL), a listing of the data dir (every path with its size and
 * mtime), and the processes below this one (the daemon runs in-process, so
 * every hypervisor, passt or qemu-img it starts is a descendant).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export interface Footprint {
  db: Buffer[];
  files: string[];
  processes: string[];
}

function listing(dir: string, out: string[] = [], rel = ''): string[] {
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const p = path.join(rel, name);
    const st = lstatSync(path.join(dir, p));
    out.push(`${p} ${st.isDirectory() ? 'dir' : st.size} ${st.mtimeMs}`);
    if (st.isDirectory()) listing(dir, out, p);
  }
  return out;
}

function descendants(): string[] {
  const rows = execFileSync('ps', ['-e', '-o', 'pid=,ppid=,args='], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), args: m[3]! }));
  const ours = new Set([process.pid]);
  // Parents come before children in ps's pid order only by chance: iterate to a fixpoint.
  for (let grew = true; grew;) {
    grew = false;
    for (const r of rows)
      if (!ours.has(r.pid) && ours.has(r.ppid)) {
        ours.add(r.pid);
        grew = true;
      }
  }
  // ps itself is a child of ours while it runs: never the same pid twice.
  return rows
    .filter((r) => ours.has(r.pid) && r.pid !== process.pid && !r.args.startsWith('ps '))
    .map((r) => `${r.pid} ${r.args}`)
    .sort();
}

export function footprint(dataDir: string): Footprint {
  const db = path.join(dataDir, 'mvirt.db');
  return {
    db: [db, `${db}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)),
    files: listing(dataDir),
    processes: descendants(),
  };
}

/** Runs `fn` (a dry run) and asserts the footprint is the same after it; returns fn's result. */
export async function unchanged<T>(
  dataDir: string,
  fn: () => Promise<T>,
  what: string,
): Promise<T> {
  const before = footprint(dataDir);
  const out = await fn();
  const after = footprint(dataDir);
  assert.deepEqual(after.files, before.files, `${what}: the data dir changed`);
  assert.deepEqual(after.processes, before.processes, `${what}: processes changed`);
  assert.equal(after.db.length, before.db.length, `${what}: a database file came or went`);
  after.db.forEach((b, i) => assert.ok(b.equals(before.db[i]!), `${what}: the database changed`));
  return out;
}
