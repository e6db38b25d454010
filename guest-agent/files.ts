/**
 * Files: the fsWrite, fsRead and fsOp messages (protocol/fs.ts). Transfers
 * (chunked, checked, resumable writes and reads) are in fs-transfers.ts, tar
 * for directories in fs-tar.ts, single operations in fs-ops.ts, the errors
 * the host hears in fs-errors.ts.
 */
import { guestFs } from './fs-errors.js';
import { createFsOps } from './fs-ops.js';
import { createTransfers, type TransferOptions } from './fs-transfers.js';
import type { Platform } from './platform/types.js';

export type FilesOptions = TransferOptions;
export const DEFAULT_FILES_OPTIONS: FilesOptions = { idleMs: 120_000 };

export function createFiles(
  platform: Platform,
  log: (level: 'warn' | 'info', m: string) => void,
  opts: FilesOptions = DEFAULT_FILES_OPTIONS,
) {
  const transfers = createTransfers(platform, log, opts);
  const op = createFsOps({ fs: () => guestFs(platform), closeTransfer: transfers.close, log });
  return {
    write: transfers.write,
    read: transfers.read,
    op,
    /** Transfers open now (tests, diagnostics). */
    open: transfers.count,
    /** Agent stop: close every transfer (partial files stay). */
    closeAll: transfers.closeAll,
  };
}

export type Files = ReturnType<typeof createFiles>;
