/**
 * Constants of the API that need no schema library: a controller reads them
 * before it has loaded one (the `mvirt` CLI writes its help and checks its
 * arguments with them, and loads zod only once it connects). rpc.ts and
 * client.ts build on them and re-export them.
 */

/** vm.create {fromSnapshot, count}: at most this many forks per call. */
export const MAX_FORKS = 64;

/** job.run's stdin, in bytes of UTF-8: a request must stay under the broker's packet limit. */
export const JOB_STDIN_BYTES = 512 * 1024;
/** job.stdin: at most this many bytes per call (base64 in the request). */
export const JOB_STDIN_CHUNK_BYTES = 256 * 1024;

/** A tty job's window: at most this many columns and rows (the pty's winsize is 16-bit). */
export const TTY_MAX_COLS = 4096;
export const TTY_MAX_ROWS = 4096;
/** The size of a tty job's window when the caller gives none (a VT100's). */
export const TTY_DEFAULT_SIZE = { cols: 80, rows: 24 } as const;

/** A job id as job.run returns it (the JobId schema). */
export const JOB_ID_RE = /^job-[0-9a-f]{12,32}$/;

/** Where a controller looks for mvirtd when it is told nothing. */
export const DEFAULT_BROKER_URL = 'mqtt://127.0.0.1:1883';

/** How long a controller waits for a reply by default. */
export const DEFAULT_TIMEOUT_MS = 30_000;
