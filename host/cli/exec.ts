/**
 * `mvirt exec [-i] [-t] VM -- CMD [ARG...]`: a command in a running VM, as
 * `docker exec` runs one. -t runs it under a pseudo-terminal in the guest
 * (job.run {tty}); -i sends stdin to it (job.stdin). With both and a terminal
 * here, the local terminal is in raw mode: every key goes to the guest as it
 * is typed (Ctrl-C too, where the guest's terminal makes it SIGINT), window
 * changes follow (SIGWINCH → job.resize), and mvirt ends with the command's
 * exit code. The terminal is restored on every way out (and by main.ts's
 * exit hook, whatever else happens).
 */
import { spawnSync } from 'node:child_process';
import {
  JOB_STDIN_CHUNK_BYTES,
  TTY_DEFAULT_SIZE,
  TTY_MAX_COLS,
  TTY_MAX_ROWS,
} from '../../protocol/limits.js';
import type { ParamsOf } from '../../protocol/rpc.js';
import { UsageError, type Parsed } from './args.js';
import { secondsMs, str, type Command } from './command.js';
import { followToExit } from './follow-exit.js';
import { jobOptions, parseEnv } from './jobs.js';
import { shellLine } from './job-view.js';
import type { TtyOut } from './io.js';
import { pumpKeys, pumpStdin, type StdinPump } from './stdin-pump.js';

type RunParams = ParamsOf<'job.run'>;

/** The local terminal's size, within what the protocol takes; the default when stdout is no terminal. */
export function windowSize(out: TtyOut): { cols: number; rows: number } {
  const clamp = (n: number | undefined, max: number, dflt: number) =>
    n !== undefined && Number.isInteger(n) && n >= 1 ? Math.min(n, max) : dflt;
  if (out.isTTY !== true) return { ...TTY_DEFAULT_SIZE };
  return {
    cols: clamp(out.columns, TTY_MAX_COLS, TTY_DEFAULT_SIZE.cols),
    rows: clamp(out.rows, TTY_MAX_ROWS, TTY_DEFAULT_SIZE.rows),
  };
}

/** The job.run params from the command line; every mistake is a UsageError. */
export function execParams(p: Parsed, env: Record<string, string | undefined>, out: TtyOut) {
  const argv = p.dashDash;
  const before = p.positionals.slice(0, p.positionals.length - (argv?.length ?? 0));
  if (before.length === 0) throw new UsageError('missing VM', 'exec');
  if (before.length > 1 || argv === undefined)
    throw new UsageError(
      `put the command after --: mvirt exec [options] ${before[0]!} -- ${shellLine(before.slice(1))}`,
      'exec',
    );
  if (argv.length === 0) throw new UsageError('missing CMD after --', 'exec');
  const tty = p.values.tty === true;
  const interactive = p.values.interactive === true;
  const params: RunParams = { vm: before[0]!, argv, encoding: 'bytes' };
  if (interactive) params.stdinOpen = true;
  const timeoutMs = secondsMs(p, 'timeout');
  if (timeoutMs !== undefined) params.timeoutMs = timeoutMs;
  const cwd = str(p, 'cwd');
  if (cwd !== undefined) params.cwd = cwd;
  const vars = parseEnv((p.values.env as string[] | undefined) ?? [], 'exec') ?? {};
  if (tty) {
    Object.assign(params, { tty: true }, windowSize(out));
    // The guest draws for the terminal here (mvirt-pty says xterm otherwise).
    if (vars.TERM === undefined && env.TERM) vars.TERM = env.TERM;
  }
  if (Object.keys(vars).length > 0) params.env = vars;
  return { params, tty, interactive };
}

const DESCRIPTION = [
  'Runs CMD as a job in a running VM (its id or name) and ends with its exit code, as',
  '`mvirt run --vm VM` does. -t gives it a pseudo-terminal in the guest (its stdout and',
  'stderr then come merged, as on any terminal); -i sends stdin to it. With -it and a',
  "terminal here, that terminal is in raw mode until mvirt ends: keys go to the guest's",
  'terminal as they are typed (Ctrl-C interrupts the command in the guest, not mvirt),',
  'window changes follow, and the terminal is restored whatever way mvirt ends.',
  '',
  'A signal to mvirt (or Ctrl-C without -it) cancels the job and waits for its end; a',
  'second one leaves at once. Exit codes as for `mvirt run`.',
].join('\n');

const commands: Command[] = [
  {
    name: 'exec',
    summary: 'Run a command in a running VM; -it for an interactive shell (like docker exec).',
    usage: '[options] VM -- CMD [ARG...]',
    args: ['VM', '[CMD...]'],
    description: DESCRIPTION,
    options: {
      interactive: { type: 'boolean', short: 'i', help: 'send stdin to the command' },
      tty: {
        type: 'boolean',
        short: 't',
        help: 'run the command under a pseudo-terminal in the guest',
      },
      ...jobOptions('command'),
    },
    examples: [
      'mvirt exec -it web-1 -- sh',
      'mvirt exec web-1 -- cat /etc/os-release',
      'tar cz src | mvirt exec -i web-1 -- tar xz -C /tmp',
      'mvirt exec -t web-1 -- top -n 1',
    ],
    run: async (ctx, p) => {
      const { stdin, stdout } = ctx.io;
      const { params, tty, interactive } = execParams(p, ctx.io.env, stdout);
      const keyboard = stdin.isTTY === true;
      const raw = tty && interactive && keyboard && typeof stdin.setRawMode === 'function';
      if (tty && interactive && !raw)
        throw new UsageError(
          'the input is not a terminal: -it needs one (use -i alone to send piped input)',
          'exec',
        );
      const c = await ctx.client();
      // job.stdin and job.resize one after the other, in the order asked:
      // keys typed after a window change reach the guest after it.
      let chain: Promise<unknown> = Promise.resolve();
      const inOrder = <T>(fn: () => Promise<T>): Promise<T> => {
        const r = chain.then(fn);
        chain = r.catch(() => undefined);
        return r;
      };
      const cleanups: (() => void)[] = [];
      let pump: StdinPump | undefined;
      let interrupts = 0;
      let jobId: string | undefined;
      const stop = new AbortController();
      const cancel = (id: string): void => {
        ctx.err(
          `${raw ? '\r\n' : ''}mvirt: cancelling ${id} (again to leave at once)${raw ? '\r' : ''}\n`,
        );
        c.call('job.cancel', { jobId: id }).catch((err: unknown) =>
          ctx.err(
            `mvirt: could not cancel ${id}: ${err instanceof Error ? err.message : String(err)}\n`,
          ),
        );
      };
      cleanups.push(
        ctx.io.onSignal(() => {
          interrupts++;
          if (interrupts > 1) stop.abort();
          else if (jobId !== undefined) cancel(jobId);
        }),
      );
      try {
        const job = await c.call('job.run', params);
        jobId = job.jobId;
        const id = jobId;
        if (interrupts > 0) cancel(id);
        if (raw) {
          stdin.setRawMode!(true);
          cleanups.push(() => void stdin.setRawMode!(false));
          if (stdin === process.stdin) rawOutput();
        }
        if (tty && stdout.isTTY === true)
          cleanups.push(
            followWindow(stdout, (size) =>
              inOrder(() => c.call('job.resize', { jobId: id, ...size })),
            ),
          );
        if (interactive) {
          const send = async (data: Buffer, eof: boolean) =>
            (
              await inOrder(() =>
                c.call('job.stdin', { jobId: id, data: data.toString('base64'), eof }),
              )
            ).open;
          const input = { input: stdin, chunkBytes: JOB_STDIN_CHUNK_BYTES, send };
          pump = keyboard ? pumpKeys(input) : pumpStdin(input);
          pump.done.catch((err: unknown) =>
            ctx.err(
              `mvirt: stdin not fully sent to ${id}: ${err instanceof Error ? err.message : String(err)}\n`,
            ),
          );
        }
        return await followToExit(ctx, c, job, {
          signal: stop.signal,
          raw,
          ended: () => pump?.stop(),
        });
      } finally {
        pump?.stop();
        // The terminal first (pushed after the signal handler: undone before it).
        for (const f of cleanups.reverse()) {
          try {
            f();
          } catch {
            // best effort: the remaining cleanups still run
          }
        }
      }
    },
  },
];

/**
 * Output as the guest's terminal made it: Node's raw mode (libuv's) keeps
 * OPOST/ONLCR, so each "\n" would become "\r\n" here once more, and a
 * full-screen program in the guest that moves the cursor down with "\n"
 * (terminfo's cud1 for xterm) would land in column 0. Node has no call for
 * it: one `stty -opost` on the terminal (~5 ms, once). setRawMode(false)
 * puts back the modes libuv saved before raw mode, OPOST with them.
 */
function rawOutput(): void {
  spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'] });
}

/**
 * SIGWINCH (the terminal's 'resize') → job.resize, one call on the way at a
 * time and the latest size sent last. Returns what stops it.
 */
function followWindow(
  out: TtyOut,
  resize: (size: { cols: number; rows: number }) => Promise<unknown>,
): () => void {
  let sent = windowSize(out);
  let busy = false;
  const onResize = (): void => {
    if (busy) return;
    const size = windowSize(out);
    if (size.cols === sent.cols && size.rows === sent.rows) return;
    busy = true;
    sent = size;
    // A job that has just ended (JOB_NOT_RUNNING) has no window left to size.
    void resize(size)
      .catch(() => undefined)
      .finally(() => {
        busy = false;
        onResize();
      });
  };
  out.on('resize', onResize);
  return () => void out.off('resize', onResize);
}

export const execCommands = commands;
