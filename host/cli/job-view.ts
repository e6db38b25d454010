/**
 * How job records read in a terminal: the `mvirt jobs` table, `mvirt job
 * show` details, the command line as a shell would take it, and how `mvirt
 * run` ends for a finished job (its exit code and the note on stderr).
 */
import { inert } from '../../protocol/inert.js';
import { constants as os } from 'node:os';
import type { JobRecord } from '../../protocol/rpc.js';
import { EXIT } from './exit.js';
import { duration, keyValues, relativeTime, table } from './output.js';

/** argv as a shell would need it typed: plain words bare, the rest single-quoted. */
export function shellLine(argv: string[]): string {
  return argv
    .map((a) => (/^[A-Za-z0-9_\-+=.,/:@%^]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

const clip = (s: string, n: number): string =>
  [...s].length > n ? `${[...s].slice(0, n - 1).join('')}…` : s;

export function targetText(rec: JobRecord): string {
  const t = rec.target;
  if (!t) return '-';
  if (t.kind === 'vm') return `vm ${t.vm}`;
  if (t.kind === 'pool') return `pool ${t.pool}`;
  return `image ${t.image}`;
}

/** "0", "SIGKILL", or "-" while there is neither. */
const exitText = (rec: JobRecord): string =>
  rec.exitCode !== null && rec.exitCode !== undefined
    ? String(rec.exitCode)
    : rec.signal
      ? rec.signal
      : '-';

function runTime(rec: JobRecord, now: number): number | undefined {
  if (!rec.startedAt) return undefined;
  const start = Date.parse(rec.startedAt);
  const end = rec.finishedAt ? Date.parse(rec.finishedAt) : now;
  return Number.isFinite(start) && Number.isFinite(end) ? Math.max(0, end - start) : undefined;
}

export function jobTable(jobs: JobRecord[], now: number): string {
  return table(
    ['id', 'state', 'vm', 'exit', 'started', 'duration', 'command'],
    jobs.map((j) => {
      const d = runTime(j, now);
      return [
        j.jobId,
        j.state + (j.state === 'queued' && j.queuePosition ? ` #${j.queuePosition}` : ''),
        j.vm ?? `(${targetText(j)})`,
        exitText(j),
        relativeTime(j.startedAt, now),
        d === undefined ? '-' : duration(d),
        clip(shellLine(j.argv ?? []), 60),
      ];
    }),
    ['left', 'left', 'left', 'right', 'left', 'right'],
  );
}

export const bytes = (n: number): string =>
  n < 1024
    ? `${n} B`
    : n < 1024 * 1024
      ? `${(n / 1024).toFixed(1)} KiB`
      : `${(n / 1024 / 1024).toFixed(1)} MiB`;

const limitsText = (l: NonNullable<JobRecord['limits']>): string =>
  [
    l.memoryMiB !== undefined ? `memory ${l.memoryMiB} MiB` : null,
    l.cpus !== undefined ? `${l.cpus} CPUs` : null,
  ]
    .filter(Boolean)
    .join(', ');

export function jobDetails(j: JobRecord, now: number): string {
  const when = (t: string | null | undefined): string | undefined =>
    t ? `${relativeTime(t, now)} (${t})` : undefined;
  const d = runTime(j, now);
  return keyValues([
    ['ID', j.jobId],
    ['State', j.state + (j.reason ? ` (${j.reason})` : '')],
    ['Queue', j.state === 'queued' && j.queuePosition ? `#${j.queuePosition}` : undefined],
    ['Command', shellLine(j.argv ?? [])],
    ['Target', targetText(j)],
    ['VM', j.vm ?? undefined],
    ['Cwd', j.cwd],
    ['Timeout', j.timeoutMs ? duration(j.timeoutMs) : undefined],
    ['Limits', j.limits ? limitsText(j.limits) : undefined],
    [
      'Terminal',
      j.tty ? `${j.tty.cols} columns × ${j.tty.rows} rows (its size at the start)` : undefined,
    ],
    [
      'Used',
      j.usage
        ? `CPU ${duration(j.usage.cpuMs)}, peak memory ${(j.usage.peakMemoryBytes / 1048576).toFixed(1)} MiB`
        : undefined,
    ],
    ['Exit code', j.exitCode === null || j.exitCode === undefined ? undefined : String(j.exitCode)],
    ['Signal', j.signal ?? undefined],
    ['OOM killed', j.oomKilled ? 'yes' : undefined],
    ['Created', when(j.createdAt)],
    ['Started', when(j.startedAt)],
    ['Finished', when(j.finishedAt)],
    ['Duration', d === undefined ? undefined : duration(d)],
    [
      'Output',
      typeof j.nextSeq === 'number'
        ? `${j.nextSeq} chunk${j.nextSeq === 1 ? '' : 's'}, ${bytes(j.outputBytes ?? 0)}` +
          (j.dropped?.chunks
            ? `; ${j.dropped.chunks} dropped by retention (${bytes(j.dropped.bytes)})`
            : '')
        : undefined,
    ],
  ]);
}

/** How `mvirt run` ends for a terminal job: its exit code and what to say on stderr. */
export function jobExit(rec: JobRecord): { code: number; note?: string } {
  const id = rec.jobId;
  const why = rec.reason ? `: ${inert(rec.reason)}` : '';
  switch (rec.state) {
    case 'succeeded':
      return { code: rec.exitCode ?? EXIT.OK };
    case 'failed': {
      if (rec.signal) {
        const n = (os.signals as Record<string, number | undefined>)[rec.signal];
        return {
          code: EXIT.SIGNAL_BASE + (n ?? 0),
          note: `${id} was killed by ${rec.signal}${rec.oomKilled ? ' (out of memory: the OOM killer)' : ''}`,
        };
      }
      if (rec.exitCode !== null && rec.exitCode !== undefined) return { code: rec.exitCode };
      return { code: EXIT.JOB_NOT_STARTED, note: `${id} could not be started${why}` };
    }
    case 'timed_out':
      return {
        code: EXIT.JOB_TIMED_OUT,
        note: `${id} timed out${rec.timeoutMs ? ` after ${duration(rec.timeoutMs)}` : ''} and was killed`,
      };
    case 'cancelled':
      return { code: EXIT.JOB_CANCELLED, note: `${id} was cancelled${why}` };
    case 'lost':
      return { code: EXIT.JOB_LOST, note: `${id} was lost${why || ': no reason given'}` };
    default:
      return { code: EXIT.OPERATION, note: `${id} is still ${rec.state}` };
  }
}
