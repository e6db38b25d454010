/** How a file operation's failure reaches the host: errno → one of protocol/fs.ts's codes. */
import type { FsAgentError } from '../protocol/fs.js';
import { AgentError } from './errors.js';

/** An error for the host: one of protocol/fs.ts's codes. */
export const FsError = AgentError;

const ERRNO: Record<string, FsAgentError> = {
  ENOENT: 'FILE_NOT_FOUND',
  EEXIST: 'FILE_EXISTS',
  ENOTEMPTY: 'FILE_EXISTS',
  EACCES: 'FILE_PERMISSION',
  EPERM: 'FILE_PERMISSION',
  EROFS: 'FILE_PERMISSION',
  ENOTDIR: 'FILE_TYPE',
  EISDIR: 'FILE_TYPE',
  ELOOP: 'FILE_TYPE',
  ENOSPC: 'GUEST_DISK_FULL',
  EDQUOT: 'GUEST_DISK_FULL',
  EFBIG: 'GUEST_DISK_FULL',
};

/** An fs error, as the host hears it: errno → code, the path said once. */
export function fsFail(err: unknown, what: string): Error {
  if (err instanceof AgentError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = e.code !== undefined ? ERRNO[e.code] : undefined;
  const why = e.code ?? (err instanceof Error ? err.message : String(err));
  if (code) return new AgentError(code, `${what}: ${why}`);
  return new AgentError('INTERNAL', `${what}: ${err instanceof Error ? err.message : String(err)}`);
}

/** The platform's file access, or INTERNAL where this agent has none. */
export function guestFs<F>(platform: { fs?: F }): F {
  if (!platform.fs) throw new AgentError('INTERNAL', 'this agent has no file access');
  return platform.fs;
}
