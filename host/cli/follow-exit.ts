/**
 * Following a job's output from the CLI (mvirt run, exec, logs): chunks
 * written where they belong, and a job followed to the exit code mvirt ends
 * with.
 */
import type { MvirtClient } from '../../protocol/client.js';
import { inert } from '../../protocol/inert.js';
import type { JobRecord, OutputChunk, ResultOf } from '../../protocol/rpc.js';
import type { Context } from './command.js';
import { EXIT } from './exit.js';
import { jobExit } from './job-view.js';

/**
 * follow.ts checks what it reads with the protocol's schemas (zod): it is
 * loaded by the commands that follow output, not with this module, which
 * `mvirt --help` loads too.
 */
export const loadFollow = () => import('./follow.js');

/** Write a chunk where it belongs, as it comes: bytes as they are when it carries base64. */
export const writeChunk =
  (ctx: Context) =>
  (c: OutputChunk): void =>
    void (c.stream === 'stderr' ? ctx.io.stderr : ctx.io.stdout).write(
      c.encoding === 'base64' ? Buffer.from(c.data, 'base64') : c.data,
    );

/**
 * Follow a submitted job to its end (mvirt run, mvirt exec): its output on
 * stdout and stderr as it comes, notes on stderr, then the exit code mvirt
 * ends with (JOB_CANCELLED when `signal` left first). `ended` runs once the
 * following stops; `raw`: the terminal is in raw mode (lines end "\r\n").
 */
export async function followToExit(
  ctx: Context,
  c: MvirtClient,
  job: ResultOf<'job.run'>,
  o: {
    signal: AbortSignal;
    raw?: boolean;
    ended?: () => void;
    onRecord?: (r: JobRecord) => void;
  },
): Promise<number> {
  const { followJob, mqttFollowClient } = await loadFollow();
  const rec = await followJob(mqttFollowClient(c), {
    jobId: job.jobId,
    follow: true,
    initial: job,
    signal: o.signal,
    onChunk: writeChunk(ctx),
    onNote: (line) => ctx.err(`${inert(line)}${o.raw ? '\r' : ''}\n`),
    ...(o.onRecord ? { onRecord: o.onRecord } : {}),
  });
  o.ended?.();
  if (rec === null) return EXIT.JOB_CANCELLED;
  const { code, note } = jobExit(rec);
  if (note) ctx.err(`${o.raw ? '\r\n' : ''}mvirt: ${note}\n`);
  return code;
}
