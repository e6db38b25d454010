/** Run a command, capture its output, fail with an MvirtError that shows stderr. */
import { spawn } from 'node:child_process';
import { MvirtError, type ErrorCode } from '../protocol/errors.js';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: Buffer;
  code?: ErrorCode;
  /** Return a non-zero exit instead of throwing. */
  allowFail?: boolean;
}

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

export function run(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) =>
      reject(
        new MvirtError(opts.code ?? 'BUILD_FAILED', `cannot run ${cmd}: ${e.message}`, {
          cause: e,
        }),
      ),
    );
    child.on('close', (code, signal) => {
      const r = {
        code: code ?? 128,
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString(),
      };
      if (r.code !== 0 && opts.allowFail !== true) {
        const tail = r.stderr.trim().split('\n').slice(-8).join('\n');
        reject(
          new MvirtError(
            opts.code ?? 'BUILD_FAILED',
            `${cmd} ${args.join(' ')} failed (${signal ?? `exit ${r.code}`})${tail === '' ? '' : `:\n${tail}`}`,
          ),
        );
      } else resolve(r);
    });
    if (opts.input !== undefined && child.stdin !== null) child.stdin.end(opts.input);
  });
}

/**
 * A squashfs of `stage` made reproducibly: every time `sde` (the builders'
 * SOURCE_DATE_EPOCH), fixed order, no xattrs, owners root unless `keepOwners`.
 * squashfs-tools 4.5 refuses -mkfs-time and -all-time while SOURCE_DATE_EPOCH
 * is set ("can't be used at the same time"), so it runs without it.
 */
export async function makeSquashfs(o: {
  stage: string;
  out: string;
  comp: 'zstd' | 'xz' | 'lz4' | 'gzip';
  /** zstd's level. */
  level?: number;
  sde: number;
  keepOwners?: boolean;
}): Promise<void> {
  const { SOURCE_DATE_EPOCH: _given, ...env } = process.env;
  await run(
    'mksquashfs',
    [
      o.stage,
      o.out,
      '-noappend',
      '-quiet',
      '-no-progress',
      '-comp',
      o.comp,
      ...(o.comp === 'zstd'
        ? ['-Xcompression-level', String(o.level ?? 15)]
        : o.comp === 'lz4'
          ? ['-Xhc']
          : []),
      '-reproducible',
      '-mkfs-time',
      String(o.sde),
      '-all-time',
      String(o.sde),
      ...(o.keepOwners ? [] : ['-all-root']),
      '-no-xattrs',
    ],
    { env },
  );
}
