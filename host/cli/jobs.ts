/**
 * Jobs: `mvirt run` (submit, stream the output, end with the job's exit
 * code), `mvirt jobs` / `mvirt job …` (list, show, cancel) and `mvirt logs`.
 * Output ordering lives in follow.ts, how records read in job-view.ts.
 */
import type { MvirtClient } from '../../protocol/client.js';
import { inert } from '../../protocol/inert.js';
import { JOB_ID_RE, JOB_STDIN_CHUNK_BYTES } from '../../protocol/limits.js';
import type { OutputChunk, ParamsOf, ResultOf } from '../../protocol/rpc.js';
import { JOB_STATES, SIGNALS } from '../../protocol/states.js';
import { UsageError, integer, oneOf, type OptionSpec, type Parsed } from './args.js';
import { parseLabels } from './hosts.js';
import { secondsMs, str, type Command, type Context } from './command.js';
import { EXIT, RUN_EXIT_CODES } from './exit.js';
import { jobDetails, jobTable, shellLine } from './job-view.js';
import { json, jsonLine } from './output.js';
import { hasInput, pumpStdin, type StdinPump } from './stdin-pump.js';
import { followToExit, loadFollow, writeChunk } from './follow-exit.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A job id argument, checked before it becomes part of a topic name. */
export function jobIdArg(s: string, command: string): string {
  if (!JOB_ID_RE.test(s))
    throw new UsageError(
      `'${s}' is not a job id: job ids look like job-0123456789ab (\`mvirt jobs\` lists them)`,
      command,
    );
  return s;
}

type RunParams = ParamsOf<'job.run'>;

export function parseEnv(items: string[], command = 'run'): Record<string, string> | undefined {
  if (items.length === 0) return undefined;
  const env: Record<string, string> = {};
  for (const kv of items) {
    const eq = kv.indexOf('=');
    const name = eq < 0 ? kv : kv.slice(0, eq);
    if (eq < 0 || !ENV_NAME.test(name))
      throw new UsageError(
        `--env wants NAME=VALUE with NAME made of letters, digits and _ (not starting with a digit); got '${kv}'`,
        command,
      );
    env[name] = kv.slice(eq + 1);
  }
  return env;
}

/** The job.run params from the command line; every mistake is a UsageError. */
export function runParams(p: Parsed): RunParams {
  const argv = p.dashDash;
  const before = p.positionals.slice(0, p.positionals.length - (argv?.length ?? 0));
  if (before.length > 0)
    throw new UsageError(
      `put the command after --: mvirt run [options] -- ${shellLine(p.positionals)}`,
      'run',
    );
  if (argv === undefined) throw new UsageError('missing -- CMD [ARG...]', 'run');
  if (argv.length === 0) throw new UsageError('missing CMD after --', 'run');
  const image = str(p, 'image');
  const vm = str(p, 'vm');
  const pool = str(p, 'pool');
  const given = [
    image !== undefined && '--image',
    vm !== undefined && '--vm',
    pool !== undefined && '--pool',
  ].filter((g): g is string => g !== false);
  if (given.length > 1)
    throw new UsageError(
      `give at most one of --image, --vm and --pool (got ${given.join(' and ')})`,
      'run',
    );
  const vcpus = integer(str(p, 'vcpus'), '--vcpus');
  const memoryMiB = integer(str(p, 'memory'), '--memory');
  if ((vcpus !== undefined || memoryMiB !== undefined) && (vm !== undefined || pool !== undefined))
    throw new UsageError(
      '--vcpus and --memory size the ephemeral VM of --image (or of the default image); a --vm or --pool VM has its own size',
      'run',
    );
  const timeoutMs = secondsMs(p, 'timeout');
  const limitMiB = integer(str(p, 'limit-memory'), '--limit-memory', 4);
  const limitCpus = str(p, 'limit-cpus');
  if (limitCpus !== undefined && !(/^\d+(\.\d+)?$/.test(limitCpus) && Number(limitCpus) > 0))
    throw new UsageError(
      `--limit-cpus wants a number of CPUs such as 0.5 or 2, got '${limitCpus}'`,
      'run',
    );
  const cpus = limitCpus === undefined ? undefined : Number(limitCpus);
  const params: RunParams = {
    argv,
    ...(image !== undefined ? { image } : {}),
    ...(vm !== undefined ? { vm } : {}),
    ...(pool !== undefined ? { pool } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(vcpus !== undefined ? { vcpus } : {}),
    ...(memoryMiB !== undefined ? { memoryMiB } : {}),
  };
  if (limitMiB !== undefined || cpus !== undefined)
    params.limits = {
      ...(limitMiB !== undefined ? { memoryMiB: limitMiB } : {}),
      ...(cpus !== undefined ? { cpus } : {}),
    };
  const env = parseEnv((p.values.env as string[] | undefined) ?? []);
  if (env) params.env = env;
  const cwd = str(p, 'cwd');
  if (cwd !== undefined) params.cwd = cwd;
  return params;
}

/** The options mvirt run and mvirt exec share: the environment, folder and time limit of `what`. */
export const jobOptions = (what: string): Record<string, OptionSpec> => ({
  env: {
    type: 'string',
    multiple: true,
    value: 'K=V',
    help: 'environment variable, repeatable',
  },
  cwd: { type: 'string', value: 'DIR', help: 'working directory in the guest' },
  timeout: {
    type: 'string',
    value: 'S',
    help: `kill the ${what} after S seconds (exit code 124)`,
  },
});

const jsonChunk =
  (ctx: Context) =>
  (c: OutputChunk): void =>
    ctx.out(jsonLine(c));

const RUN_DESCRIPTION = [
  "Submits the job, then prints its output as it comes: the job's stdout on stdout, its",
  'stderr on stderr, in order, nothing twice (what was produced before mvirt subscribed is',
  "read back with job.logs). mvirt ends with the job's exit code.",
  '',
  "A stdin that is not a terminal is streamed to the job's stdin as it comes, bytes as they",
  'are, of any size (job.stdin, one 256 KiB chunk on the way at a time, so a job that reads',
  'slowly slows the reading); --no-stdin leaves it alone. Ctrl-C cancels the job and keeps',
  'printing until it has ended; a second Ctrl-C leaves at once (the cancel stands).',
  'Without --image, --vm or --pool the job gets an ephemeral VM of the default image.',
  '',
  'Exit codes:',
  ...RUN_EXIT_CODES.map(([c, m]) => `  ${c.padEnd(7)}  ${m}`),
].join('\n');

const JOBS_OPTIONS = {
  vm: { type: 'string', value: 'VM', help: 'only jobs of this VM (id or name)' },
  state: {
    type: 'string',
    value: 'STATE',
    help: `only jobs in this state (${JOB_STATES.join(', ')})`,
  },
  limit: { type: 'string', value: 'N', help: 'at most N jobs (the most recent)' },
} as const;

async function listJobs(ctx: Context, p: Parsed): Promise<number> {
  const state = oneOf(str(p, 'state'), JOB_STATES, '--state');
  const limit = integer(str(p, 'limit'), '--limit');
  const vm = str(p, 'vm');
  const params: NonNullable<ParamsOf<'job.list'>> = {
    ...(vm !== undefined ? { vm } : {}),
    ...(state !== undefined ? { state } : {}),
    ...(limit !== undefined ? { limit } : {}),
  };
  const c = await ctx.client();
  const r = await c.call('job.list', params);
  if (ctx.globals.json) ctx.out(json(r));
  else if (r.jobs.length === 0)
    ctx.out(
      state || vm ? 'no jobs match\n' : 'no jobs yet: run one with `mvirt run -- CMD [ARG...]`\n',
    );
  else {
    // Newest first, as the most recent are what one looks for.
    const jobs = [...r.jobs].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    ctx.out(jobTable(jobs, ctx.io.now()));
  }
  return EXIT.OK;
}

/**
 * `mvirt run --fleet`: the job goes into the fleet queue; the first online
 * host with room (and the labels asked for) that claims it takes it
 * (docs/fleet.md). Returns that host's client and the accepted job.
 */
async function fleetRun(
  ctx: Context,
  params: RunParams,
  labelArgs: string[],
  queueTimeoutMs: number | undefined,
): Promise<{ c: MvirtClient; job: ResultOf<'job.run'> }> {
  if (params.vm !== undefined)
    throw new UsageError('--fleet places the job on a host: not with --vm', 'run');
  const labels = parseLabels(labelArgs, 'run');
  const fleet = await ctx.fleet();
  const placed = await fleet.request('job.run', params, {
    need: Object.keys(labels).length > 0 ? { labels } : {},
    ...(queueTimeoutMs !== undefined ? { timeoutMs: queueTimeoutMs } : {}),
    onQueued: () =>
      ctx.err('mvirt: no host has room now: queued in the fleet (mvirt fleet queue)\n'),
  });
  ctx.err(`mvirt: running on ${placed.hostId}\n`);
  return { c: await ctx.clientOf(placed.hostId), job: placed.result };
}

const commands: Command[] = [
  {
    name: 'run',
    summary: "Run a command in a microVM, stream its output and exit with the job's exit code.",
    usage: '[options] -- CMD [ARG...]',
    args: ['[CMD...]'],
    description: RUN_DESCRIPTION,
    options: {
      image: {
        type: 'string',
        value: 'IMAGE',
        help: 'boot an ephemeral VM of this image for the job (the default)',
      },
      vm: { type: 'string', value: 'VM', help: 'run in this ready service VM (id or name)' },
      pool: { type: 'string', value: 'POOL', help: 'run in a ready VM of this pool' },
      ...jobOptions('job'),
      vcpus: { type: 'string', value: 'N', help: 'vCPUs of the ephemeral VM' },
      memory: { type: 'string', value: 'MiB', help: 'memory of the ephemeral VM in MiB' },
      'limit-memory': {
        type: 'string',
        value: 'MiB',
        help: "the job's own memory limit in its VM (past it, only the job is OOM-killed)",
      },
      'limit-cpus': {
        type: 'string',
        value: 'N',
        help: "the job's own CPU limit in its VM (0.5: half of one CPU)",
      },
      detach: {
        type: 'boolean',
        short: 'd',
        help: 'print the job id (with --json, the job record) and exit at once',
      },
      'no-stdin': { type: 'boolean', short: 'n', help: 'do not read stdin (the job gets none)' },
      label: {
        type: 'string',
        multiple: true,
        value: 'K=V',
        help: 'with --fleet: only a host with this label (mvirtd --label K=V), repeatable',
      },
      fleet: {
        type: 'boolean',
        help: 'put the job into the fleet queue of the broker: the first online host with room, the labels and the image takes it (docs/fleet.md)',
      },
      'queue-timeout': {
        type: 'string',
        value: 'S',
        help: 'with --fleet: give up when no host took the job within S seconds (default 600)',
      },
    },
    examples: [
      'mvirt run -- uname -a',
      'mvirt run --image default --timeout 60 -- sh -c "uname -r; df -h /"',
      "mvirt run --pool builders --env CI=1 --cwd /tmp -- sh -c 'echo $CI; pwd'",
      'tar cz src | mvirt run --vm web-1 -- tar xz -C /tmp',
      'id=$(mvirt run -d -- sleep 100); mvirt logs -f "$id"',
    ],
    run: async (ctx, p) => {
      // Output is written as the bytes the job wrote: `mvirt run -- cat FILE > x` copies FILE.
      const params: RunParams = { ...runParams(p), encoding: 'bytes' };
      const detach = p.values.detach === true;
      const piped =
        ctx.io.stdin.isTTY !== true &&
        p.values['no-stdin'] !== true &&
        (!detach || (await hasInput(ctx.io.stdin)));
      if (piped) params.stdinOpen = true;
      const labels = (p.values.label as string[] | undefined) ?? [];
      if (labels.length > 0 && p.values.fleet !== true)
        throw new UsageError('--label chooses a host of the fleet: use it with --fleet', 'run');
      const queueTimeoutMs = secondsMs(p, 'queue-timeout');
      if (queueTimeoutMs !== undefined && p.values.fleet !== true)
        throw new UsageError(
          '--queue-timeout is the wait in the fleet queue: use it with --fleet',
          'run',
        );
      const fleet =
        p.values.fleet === true ? await fleetRun(ctx, params, labels, queueTimeoutMs) : null;
      const c = fleet ? fleet.c : await ctx.client();
      let pump: StdinPump | undefined;
      const startPump = (id: string): StdinPump => {
        pump = pumpStdin({
          input: ctx.io.stdin,
          chunkBytes: JOB_STDIN_CHUNK_BYTES,
          send: async (data, eof) =>
            (await c.call('job.stdin', { jobId: id, data: data.toString('base64'), eof })).open,
        });
        // The job goes on without the rest of its input; say so once.
        pump.done.catch((err: unknown) =>
          ctx.err(
            `mvirt: stdin not fully sent to ${id}: ${err instanceof Error ? err.message : String(err)}\n`,
          ),
        );
        return pump;
      };

      let interrupts = 0;
      let jobId: string | undefined;
      let leaveNow!: () => void;
      const leaving = new Promise<null>((resolve) => (leaveNow = () => resolve(null)));
      const stop = new AbortController();
      const cancel = (id: string): void => {
        ctx.err(`mvirt: cancelling ${id} (Ctrl-C again to leave at once)\n`);
        c.call('job.cancel', { jobId: id }).catch((err: unknown) =>
          ctx.err(
            `mvirt: could not cancel ${id}: ${err instanceof Error ? err.message : String(err)}\n`,
          ),
        );
      };
      const offSignal = ctx.io.onSignal(() => {
        interrupts++;
        if (interrupts > 1) {
          stop.abort();
          leaveNow();
        } else if (jobId !== undefined) cancel(jobId);
        else ctx.err('mvirt: the job will be cancelled as soon as it exists\n');
      });
      void loadFollow(); // loaded while the job is submitted
      try {
        const submitting = fleet ? Promise.resolve(fleet.job) : c.call('job.run', params);
        submitting.catch(() => {}); // when a second Ctrl-C wins the race below
        const job = await Promise.race([submitting, leaving]);
        if (job === null) return EXIT.JOB_CANCELLED;
        jobId = job.jobId;
        if (interrupts > 0) cancel(jobId);
        if (piped) startPump(jobId);
        if (detach) {
          // Detached, the input is still the job's: sent in full before leaving.
          await pump?.done.catch(() => undefined);
          ctx.out(ctx.globals.json ? json(job) : `${job.jobId}\n`);
          return interrupts > 0 ? EXIT.JOB_CANCELLED : EXIT.OK;
        }
        let queueShown = false;
        return await followToExit(ctx, c, job, {
          signal: stop.signal,
          ended: () => pump?.stop(),
          onRecord: (r) => {
            if (
              r.state === 'queued' &&
              r.queuePosition !== undefined &&
              !queueShown &&
              ctx.io.stderr.isTTY === true
            ) {
              queueShown = true;
              ctx.err(`mvirt: ${r.jobId} is queued (position ${r.queuePosition})\n`);
            }
          },
        });
      } finally {
        pump?.stop();
        offSignal();
      }
    },
  },
  {
    name: 'jobs',
    summary: 'List jobs, newest first.',
    options: JOBS_OPTIONS,
    examples: ['mvirt jobs', 'mvirt jobs --state running', 'mvirt jobs --vm web-1 --json'],
    run: listJobs,
  },
  {
    name: 'job ls',
    summary: 'List jobs (the same as `mvirt jobs`).',
    options: JOBS_OPTIONS,
    examples: ['mvirt job ls --state failed --limit 10'],
    run: listJobs,
  },
  {
    name: 'job get',
    summary: 'Show one job.',
    args: ['JOB'],
    examples: ['mvirt job get job-0123456789ab', 'mvirt job get job-0123456789ab --json'],
    run: async (ctx, p) => {
      const jobId = jobIdArg(p.positionals[0]!, 'job get');
      const c = await ctx.client();
      const r = await c.call('job.get', { jobId });
      ctx.out(ctx.globals.json ? json(r) : jobDetails(r, ctx.io.now()));
      return EXIT.OK;
    },
  },
  {
    name: 'job cancel',
    summary: 'Cancel a queued or running job (its whole process group in the guest).',
    args: ['JOB'],
    examples: ['mvirt job cancel job-0123456789ab'],
    run: async (ctx, p) => {
      const jobId = jobIdArg(p.positionals[0]!, 'job cancel');
      const c = await ctx.client();
      const r = await c.call('job.cancel', { jobId });
      ctx.out(ctx.globals.json ? json(r) : `${r.jobId} is ${r.state}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'job signal',
    summary: "Send a signal to a running job's process group (SIGUSR1, SIGHUP, SIGINT, …).",
    args: ['JOB', 'SIGNAL'],
    examples: [
      'mvirt job signal job-0123456789ab SIGUSR1',
      'mvirt job signal job-0123456789ab HUP',
    ],
    run: async (ctx, p) => {
      const jobId = jobIdArg(p.positionals[0]!, 'job signal');
      const given = p.positionals[1]!.toUpperCase();
      const signal = oneOf(given.startsWith('SIG') ? given : `SIG${given}`, SIGNALS, 'SIGNAL');
      const c = await ctx.client();
      const r = await c.call('job.signal', { jobId, signal: signal! });
      ctx.out(
        ctx.globals.json
          ? json(r)
          : r.delivered
            ? `${signal} sent to ${jobId}\n`
            : `${jobId} had just exited: ${signal} reached nothing\n`,
      );
      return EXIT.OK;
    },
  },
  {
    name: 'logs',
    summary: "Print a job's stored output; with -f, then follow it until the job has ended.",
    args: ['JOB'],
    description:
      "The job's stdout goes to stdout and its stderr to stderr, in order. With --json, each\n" +
      'chunk is one JSON line {"seq", "stream", "data"} on stdout. Output the daemon dropped\n' +
      'under its retention limit is reported once on stderr. Ctrl-C stops following (the\n' +
      'job goes on).',
    options: {
      follow: {
        type: 'boolean',
        short: 'f',
        help: 'keep printing new output until the job has ended',
      },
    },
    examples: [
      'mvirt logs job-0123456789ab',
      'mvirt logs -f job-0123456789ab',
      'mvirt logs job-0123456789ab 2>/dev/null | tail',
    ],
    run: async (ctx, p) => {
      const jobId = jobIdArg(p.positionals[0]!, 'logs');
      const follow = p.values.follow === true;
      const c = await ctx.client();
      const stop = new AbortController();
      const offSignal = follow ? ctx.io.onSignal(() => stop.abort()) : () => {};
      try {
        const { followJob, mqttFollowClient } = await loadFollow();
        await followJob(mqttFollowClient(c), {
          jobId,
          follow,
          signal: stop.signal,
          onChunk: ctx.globals.json ? jsonChunk(ctx) : writeChunk(ctx),
          onNote: (line) => ctx.err(`${inert(line)}\n`),
        });
      } finally {
        offSignal();
      }
      return EXIT.OK;
    },
  },
];

export const jobCommands = commands;
