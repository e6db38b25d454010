/**
 * Exit codes and error messages. Scripts branch on the exit code; people read
 * the message and the hint under it. docs/errors.md is generated from
 * `errorsTable()` and a unit test keeps the two equal.
 */
import { inertJson, inertLines } from '../../protocol/inert.js';
import { ERROR_CODES, MvirtError, type ErrorCode } from '../../protocol/errors.js';
import { UsageError } from './args.js';

export const EXIT = {
  OK: 0,
  /** The daemon refused or failed the operation. */
  OPERATION: 1,
  /** Bad command line or parameters: nothing was done. */
  USAGE: 2,
  /** No working connection to mvirtd: broker down, wrong address or host, refused credentials. */
  CONNECTION: 3,
  // `mvirt run` ends with the job's own exit code (0-255) when it has one, else:
  /** The job hit its timeout (`timed_out`), as timeout(1) reports it. */
  JOB_TIMED_OUT: 124,
  /** The job was `lost`: its VM, agent or the daemon went away; the reason is on stderr. */
  JOB_LOST: 125,
  /** The job `failed` without an exit status or signal: it could not be started. */
  JOB_NOT_STARTED: 126,
  /** Killed by signal N: SIGNAL_BASE + N, as shells report it (137 = SIGKILL). */
  SIGNAL_BASE: 128,
  /** The job was `cancelled`, or a second Ctrl-C left at once (128 + SIGINT). */
  JOB_CANCELLED: 130,
} as const;

/** The exit codes of `mvirt run`, for its help and docs/cli.md. */
export const RUN_EXIT_CODES: [string, string][] = [
  ['0-255', "the job's own exit code (succeeded or failed)"],
  [String(EXIT.JOB_TIMED_OUT), 'the job timed out (--timeout), as timeout(1)'],
  [String(EXIT.JOB_LOST), 'the job was lost (VM, agent or daemon gone); the reason is on stderr'],
  [String(EXIT.JOB_NOT_STARTED), 'the job could not be started; the reason is on stderr'],
  ['128+N', 'the job was killed by signal N (137: SIGKILL, also the OOM killer)'],
  [
    String(EXIT.JOB_CANCELLED),
    'the job was cancelled (Ctrl-C, `mvirt job cancel`), or a second Ctrl-C',
  ],
  ['1, 2, 3', 'as every command: the job was refused, usage error, no connection'],
];

const USAGE_CODES: ReadonlySet<ErrorCode> = new Set([
  'INVALID_PARAMS',
  'INVALID_NAME',
  'CONFIG_INVALID',
]);
const CONNECTION_CODES: ReadonlySet<ErrorCode> = new Set([
  'CONNECTION_FAILED',
  'NOT_AUTHORIZED',
  'SHUTTING_DOWN',
]);

/** The exit code for an error code; TIMEOUT is 3 only when no reply came at all. */
export function exitCodeForCode(code: ErrorCode, noReply = false): number {
  if (USAGE_CODES.has(code)) return EXIT.USAGE;
  if (CONNECTION_CODES.has(code) || (code === 'TIMEOUT' && noReply)) return EXIT.CONNECTION;
  return EXIT.OPERATION;
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return EXIT.USAGE;
  if (err instanceof MvirtError) {
    const noReply = (err.details as { noReply?: unknown } | undefined)?.noReply === true;
    return exitCodeForCode(err.code, noReply);
  }
  return EXIT.OPERATION;
}

/** What to do next, per code: the line under the error. */
export const HINTS: Partial<Record<ErrorCode, string>> = {
  CONNECTION_FAILED:
    'point --broker (or MVIRT_BROKER) at mvirtd: mqtt://HOST:PORT or its unix socket <data-dir>/mvirt.sock',
  NOT_AUTHORIZED: 'give credentials with --user and MVIRT_PASSWORD (or --password)',
  TIMEOUT: 'pick the host with --host (or MVIRT_HOST), or wait longer with --timeout SECONDS',
  VM_NOT_FOUND: '`mvirt vm ls` lists the VMs',
  FILE_NOT_FOUND: 'check the path in the VM: `mvirt run VM -- ls -la DIR`',
  FILE_PERMISSION: 'the guest refused: a read-only file system, or a file the agent may not change',
  GUEST_DISK_FULL: 'free space in the guest (or give the VM a bigger disk) and copy again',
  TRANSFER_BUSY: "other transfers fill mvirtd's buffer: copy again in a moment",
  JOB_NOT_FOUND: '`mvirt jobs` lists the jobs',
  JOB_NOT_RUNNING: '`mvirt job get JOB` shows its state',
  POOL_NOT_FOUND: '`mvirt pool ls` lists the pools; `mvirt pool set NAME --min N` creates one',
  VM_EXISTS: 'choose another name, or `mvirt vm rm NAME` first',
  VM_RUNNING: 'stop it first: `mvirt vm stop VM` (or `mvirt vm rm --force VM`)',
  VM_BAD_STATE: '`mvirt vm get VM` shows its state',
  CAPACITY_EXCEEDED: '`mvirt info` shows what is allocated and the limits',
  IMAGE_NOT_FOUND: 'build it: `mvirt image build`',
  BOOT_FAILED: '`mvirt events --object VM` shows what happened',
  BOOT_TIMEOUT: '`mvirt events --object VM` shows what happened; under TCG boots are slow',
  BACKEND_UNAVAILABLE: '`mvirt info` lists the backends and why one is unavailable',
  CAPABILITY_UNSUPPORTED:
    "the VM's backend cannot do this: create the VM on one that can (`mvirt vm create --backend NAME`)",
  UNKNOWN_METHOD: 'mvirtd may be older than this mvirt: compare `mvirt info` versions',
  INVALID_RECORD:
    'mvirt and mvirtd speak different protocol versions: compare `mvirt info` versions',
  INVALID_PARAMS: 'see `mvirt COMMAND --help`',
  CONFIG_INVALID: 'see `mvirt COMMAND --help`',
  SNAPSHOT_NOT_FOUND:
    '`mvirt snapshot ls` lists the VM snapshots; `mvirt volume snapshots VOLUME` those of a volume',
  SNAPSHOT_EXISTS: 'choose another name, or delete the old one first (`mvirt snapshot rm NAME`)',
  SNAPSHOT_IN_USE:
    'start the VMs it names (they resume from it) or delete them, or give the pool it names another snapshot (`mvirt pool set POOL --from-snapshot S`, or `--snapshot`) or delete it, then delete the snapshot',
  SNAPSHOT_INCOMPATIBLE:
    'this host cannot resume that state (`mvirt snapshot get S` shows what it needs): take a new snapshot here',
  SNAPSHOT_INVALID:
    'the saved state is damaged: delete the snapshot (`mvirt snapshot rm S`); a suspended VM boots afresh after `mvirt vm stop VM`',
  INTERNAL: 'see the mvirtd log',
};

/** A daemon's error with a hint that fits the command better than the code's usual one. */
export class HintedError extends MvirtError {
  constructor(
    err: MvirtError,
    readonly hint: string,
  ) {
    super(err.code, err.message, { details: err.details, cause: err });
  }
}

/** Render an error for stderr: a message, then a hint (or usage pointer). */
export function renderError(err: unknown, json: boolean): string {
  // A message may quote what a guest said (an agent's error): inert on a terminal.
  return json ? renderRaw(err, true) : inertLines(renderRaw(err, false));
}

function renderRaw(err: unknown, json: boolean): string {
  if (err instanceof UsageError) {
    const cmd = err.command ? `mvirt ${err.command} --help` : 'mvirt --help';
    if (json) return inertJson({ error: { code: 'USAGE', message: err.message } }) + '\n';
    return `mvirt: ${err.message}\nRun '${cmd}' for usage.\n`;
  }
  if (err instanceof MvirtError) {
    if (json) return inertJson({ error: err.toBody() }) + '\n';
    const hint = err instanceof HintedError ? err.hint : HINTS[err.code];
    return `mvirt: ${err.message} [${err.code}]\n${hint ? `hint: ${hint}\n` : ''}`;
  }
  const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
  if (json) return inertJson({ error: { code: 'INTERNAL', message: String(err) } }) + '\n';
  return `mvirt: unexpected error: ${msg}\n`;
}

/** The Markdown table of every error code, its meaning and the CLI's exit code. */
export function errorsTable(): string {
  const rows = (Object.keys(ERROR_CODES) as ErrorCode[]).map((code) => {
    const exit = code === 'TIMEOUT' ? '1 (3 when no reply came)' : String(exitCodeForCode(code));
    return `| \`${code}\` | ${ERROR_CODES[code].replace(/\|/g, '\\|')} | ${exit} |`;
  });
  return (
    ['| code | meaning | `mvirt` exit code |', '| --- | --- | --- |', ...rows].join('\n') + '\n'
  );
}
