/**
 * The `jobs` and `job_output` tables. Output is stored as the raw bytes the
 * agent sent, one row per chunk keyed by (job, seq), under a per-job byte cap:
 * beyond it the oldest chunks are deleted and counted (`dropped_*`), so a job
 * that floods its output keeps its newest part and a record of the loss.
 */
import type { Db } from './db.js';
import { createOwnerRepo, type OwnerRepo } from './owners.js';
import type { JobLimits, JobUsage } from '../../protocol/agent.js';
import type { TtySize } from '../../protocol/tty.js';
import type { JobRecord, JobState, JobTarget, OutputChunk } from '../../protocol/rpc.js';

/** What job.run stores besides the public record: the request itself, for a restart. */
export interface JobSpec {
  id: string;
  target: JobTarget;
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  stdin?: Buffer;
  /** stdin stays open after `stdin` for job.stdin. */
  stdinOpen?: boolean;
  /** Output passed on as bytes (base64), not decoded as UTF-8. */
  bytesOut?: boolean;
  timeoutMs?: number;
  /** The job's own cgroup limits in the guest. */
  limits?: JobLimits;
  /** Runs under a pseudo-terminal of this (initial) size. */
  tty?: TtySize;
  vcpus?: number;
  memoryMiB?: number;
}

export interface StoredChunk {
  seq: number;
  stream: OutputChunk['stream'];
  data: Buffer;
}

export interface JobFinish {
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  usage?: JobUsage;
}

interface JobRow {
  id: string;
  vm_id: string | null;
  target: string;
  argv: string;
  env: string | null;
  cwd: string | null;
  stdin: Buffer | null;
  stdin_open: number;
  bytes_out: number;
  timeout_ms: number | null;
  limits: string | null;
  tty: string | null;
  cpu_ms: number | null;
  peak_memory_bytes: number | null;
  vcpus: number | null;
  memory_mib: number | null;
  state: JobState;
  reason: string | null;
  exit_code: number | null;
  signal: string | null;
  oom_killed: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  next_seq: number;
  total_bytes: number;
  first_seq: number;
  dropped_chunks: number;
  dropped_bytes: number;
}

function rowToRecord(r: JobRow): JobRecord {
  const rec: JobRecord = {
    jobId: r.id,
    vm: r.vm_id,
    target: JSON.parse(r.target) as JobTarget,
    argv: JSON.parse(r.argv) as string[],
    state: r.state,
    exitCode: r.exit_code,
    signal: r.signal,
    oomKilled: r.oom_killed === 1,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    nextSeq: r.next_seq,
    outputBytes: r.total_bytes,
    dropped: { chunks: r.dropped_chunks, bytes: r.dropped_bytes },
  };
  if (r.cwd !== null) rec.cwd = r.cwd;
  if (r.timeout_ms !== null) rec.timeoutMs = r.timeout_ms;
  if (r.reason !== null) rec.reason = r.reason;
  if (r.bytes_out) rec.encoding = 'bytes';
  if (r.limits !== null) rec.limits = JSON.parse(r.limits) as JobLimits;
  if (r.tty !== null) rec.tty = JSON.parse(r.tty) as TtySize;
  if (r.cpu_ms !== null && r.peak_memory_bytes !== null)
    rec.usage = { cpuMs: r.cpu_ms, peakMemoryBytes: r.peak_memory_bytes };
  return rec;
}

function rowToSpec(r: JobRow): JobSpec {
  const spec: JobSpec = {
    id: r.id,
    target: JSON.parse(r.target) as JobTarget,
    argv: JSON.parse(r.argv) as string[],
  };
  if (r.env !== null) spec.env = JSON.parse(r.env) as Record<string, string>;
  if (r.cwd !== null) spec.cwd = r.cwd;
  if (r.stdin !== null) spec.stdin = r.stdin;
  if (r.stdin_open) spec.stdinOpen = true;
  if (r.bytes_out) spec.bytesOut = true;
  if (r.timeout_ms !== null) spec.timeoutMs = r.timeout_ms;
  if (r.limits !== null) spec.limits = JSON.parse(r.limits) as JobLimits;
  if (r.tty !== null) spec.tty = JSON.parse(r.tty) as TtySize;
  if (r.vcpus !== null) spec.vcpus = r.vcpus;
  if (r.memory_mib !== null) spec.memoryMiB = r.memory_mib;
  return spec;
}

export function createJobRepo(db: Db, owners: OwnerRepo = createOwnerRepo(db)) {
  const s = {
    insert: db.prepare(`
      INSERT INTO jobs (id, target, argv, env, cwd, stdin, stdin_open, bytes_out, timeout_ms,
                        limits, tty, vcpus, memory_mib, state, created_at, updated_at)
      VALUES (@id, @target, @argv, @env, @cwd, @stdin, @stdinOpen, @bytesOut, @timeoutMs,
              @limits, @tty, @vcpus, @memoryMiB, 'queued', @now, @now)`),
    byId: db.prepare(`SELECT * FROM jobs WHERE id = ?`),
    list: db.prepare(`
      SELECT * FROM jobs
      WHERE (@vm IS NULL OR vm_id = @vm) AND (@state IS NULL OR state = @state)
      ORDER BY created_at DESC, id DESC LIMIT @limit`),
    byState: db.prepare(`SELECT * FROM jobs WHERE state = ? ORDER BY created_at, id`),
    // Covered by the jobs_state index: no table rows are read.
    counts: db.prepare(`SELECT state, count(*) AS n FROM jobs GROUP BY state`),
    setState: db.prepare(
      `UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ? AND state = ?`,
    ),
    setVm: db.prepare(`UPDATE jobs SET vm_id = ?, updated_at = ? WHERE id = ?`),
    setStarted: db.prepare(
      `UPDATE jobs SET started_at = ?, stdin = NULL, updated_at = ? WHERE id = ?`,
    ),
    setFinish: db.prepare(`
      UPDATE jobs SET exit_code = ?, signal = ?, oom_killed = ?, cpu_ms = ?, peak_memory_bytes = ?,
                      finished_at = ?, updated_at = ?
      WHERE id = ?`),
    putChunk: db.prepare(
      `INSERT OR IGNORE INTO job_output (job_id, seq, stream, data) VALUES (?, ?, ?, ?)`,
    ),
    setOutput: db.prepare(`
      UPDATE jobs SET next_seq = ?, total_bytes = ?, first_seq = ?, dropped_chunks = ?,
                      dropped_bytes = ?
      WHERE id = ?`),
    chunkSizes: db.prepare(
      `SELECT seq, length(data) AS n FROM job_output WHERE job_id = ? ORDER BY seq`,
    ),
    firstSeq: db.prepare(`SELECT MIN(seq) AS seq FROM job_output WHERE job_id = ?`),
    dropUpTo: db.prepare(`DELETE FROM job_output WHERE job_id = ? AND seq <= ?`),
    chunks: db.prepare(
      `SELECT seq, stream, data FROM job_output WHERE job_id = ? AND seq >= ? ORDER BY seq`,
    ),
  };

  return {
    /** Run `fn` in one transaction (one fsync for a batch of writes). */
    transaction<T>(fn: () => T): T {
      return db.transaction(fn)();
    },
    insert(spec: JobSpec, now: string): void {
      s.insert.run({
        id: spec.id,
        target: JSON.stringify(spec.target),
        argv: JSON.stringify(spec.argv),
        env: spec.env ? JSON.stringify(spec.env) : null,
        cwd: spec.cwd ?? null,
        stdin: spec.stdin ?? null,
        stdinOpen: spec.stdinOpen ? 1 : 0,
        bytesOut: spec.bytesOut ? 1 : 0,
        timeoutMs: spec.timeoutMs ?? null,
        limits: spec.limits ? JSON.stringify(spec.limits) : null,
        tty: spec.tty ? JSON.stringify(spec.tty) : null,
        vcpus: spec.vcpus ?? null,
        memoryMiB: spec.memoryMiB ?? null,
        now,
      });
      owners.claim('job', spec.id);
    },
    get(id: string): JobRecord | undefined {
      const r = s.byId.get(id) as JobRow | undefined;
      return r && rowToRecord(r);
    },
    spec(id: string): JobSpec | undefined {
      const r = s.byId.get(id) as JobRow | undefined;
      return r && rowToSpec(r);
    },
    list(q: { vm?: string; state?: JobState; limit?: number } = {}): JobRecord[] {
      const rows = s.list.all({
        vm: q.vm ?? null,
        state: q.state ?? null,
        limit: q.limit ?? 1000,
      }) as JobRow[];
      return rows.map(rowToRecord);
    },
    /** Oldest first. */
    inState(state: JobState): JobRecord[] {
      return (s.byState.all(state) as JobRow[]).map(rowToRecord);
    },
    /** Compare-and-set on the state: false when the job is no longer in `from`. */
    setState(id: string, from: JobState, to: JobState, reason: string | null, now: string) {
      return s.setState.run(to, reason, now, id, from).changes === 1;
    },
    setVm(id: string, vmId: string | null, now: string): void {
      s.setVm.run(vmId, now, id);
    },
    /** The job started: its stdin has been delivered and is not kept. */
    setStarted(id: string, now: string): void {
      s.setStarted.run(now, now, id);
    },
    setFinish(id: string, f: JobFinish, now: string): void {
      s.setFinish.run(
        f.exitCode,
        f.signal,
        f.oomKilled ? 1 : 0,
        f.usage?.cpuMs ?? null,
        f.usage?.peakMemoryBytes ?? null,
        now,
        now,
        id,
      );
    },
    putChunk(id: string, c: StoredChunk): boolean {
      return s.putChunk.run(id, c.seq, c.stream, c.data).changes === 1;
    },
    setOutput(
      id: string,
      o: {
        nextSeq: number;
        totalBytes: number;
        firstSeq: number;
        dropped: { chunks: number; bytes: number };
      },
    ): void {
      s.setOutput.run(o.nextSeq, o.totalBytes, o.firstSeq, o.dropped.chunks, o.dropped.bytes, id);
    },
    /** Jobs by state, as stored (for host status and /metrics). */
    countByState(): Partial<Record<JobState, number>> {
      const out: Partial<Record<JobState, number>> = {};
      for (const r of s.counts.all() as { state: JobState; n: number }[]) out[r.state] = r.n;
      return out;
    },
    /** (seq, size) of the stored chunks, oldest first: retention state after a restart. */
    chunkSizes(id: string): { seq: number; n: number }[] {
      return s.chunkSizes.all(id) as { seq: number; n: number }[];
    },
    /** The oldest stored chunk's seq (an index lookup), or null when none is stored. */
    firstSeq(id: string): number | null {
      return (s.firstSeq.get(id) as { seq: number | null }).seq;
    },
    dropUpTo(id: string, seq: number): void {
      s.dropUpTo.run(id, seq);
    },
    /** Stored chunks from `fromSeq`, oldest first, until `maxBytes` of data (at least one). */
    chunks(
      id: string,
      fromSeq: number,
      maxBytes: number,
    ): { chunks: StoredChunk[]; more: boolean } {
      const out: StoredChunk[] = [];
      let bytes = 0;
      for (const r of s.chunks.iterate(id, fromSeq) as Iterable<StoredChunk>) {
        if (out.length > 0 && bytes + r.data.length > maxBytes) return { chunks: out, more: true };
        out.push(r);
        bytes += r.data.length;
      }
      return { chunks: out, more: false };
    },
  };
}

export type JobRepo = ReturnType<typeof createJobRepo>;
