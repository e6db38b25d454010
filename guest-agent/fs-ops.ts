/** The fsOp message (protocol/fs.ts): one operation at a time (stat, list, mkdir, remove, move, close). */
import path from 'node:path';
import type { FileStat, FsOp } from '../protocol/fs.js';
import { FsError, fsFail } from './fs-errors.js';
import type { GuestFs, GuestStats } from './platform/files.js';

const TYPE = (s: GuestStats): FileStat['type'] =>
  s.isFile() ? 'file' : s.isDirectory() ? 'dir' : s.isSymbolicLink() ? 'symlink' : 'other';

export function createFsOps(d: {
  fs: () => GuestFs;
  /** End a transfer (fs-transfers.ts); false when there is none. */
  closeTransfer: (transfer: string, discard: boolean) => Promise<boolean>;
  log: (level: 'warn' | 'info', m: string) => void;
}) {
  async function stat(p: string, follow = false): Promise<FileStat> {
    const f = d.fs();
    const s = await (follow ? f.stat(p) : f.lstat(p));
    const type = TYPE(s);
    return {
      type,
      size: s.size,
      mode: s.mode & 0o7777,
      uid: s.uid,
      gid: s.gid,
      mtimeMs: s.mtimeMs,
      ...(type === 'symlink' ? { target: (await f.readlink(p)).slice(0, 4096) } : {}),
    };
  }

  return async function op(o: FsOp): Promise<unknown> {
    const f = d.fs();
    const where = 'path' in o ? o.path : 'from' in o ? `${o.from} → ${o.to}` : o.transfer;
    try {
      switch (o.kind) {
        case 'stat':
          return await stat(o.path, o.follow === true);
        case 'list': {
          const names = (await f.readdir(o.path)).sort();
          const entries = [];
          for (const name of names.slice(0, o.limit)) {
            const s = await stat(path.join(o.path, name)).catch(() => null);
            if (s) entries.push({ name: name.slice(0, 1024), ...s });
          }
          return { entries, truncated: names.length > o.limit };
        }
        case 'mkdir': {
          const mode = o.mode ?? 0o755;
          await f.mkdir(o.path, { recursive: o.parents === true, mode });
          if (o.mode !== undefined) await f.chmod(o.path, o.mode);
          if (o.uid !== undefined || o.gid !== undefined)
            await f.chown(o.path, o.uid ?? 0, o.gid ?? 0);
          const s = await stat(o.path);
          if (s.type !== 'dir') throw new FsError('FILE_EXISTS', `${o.path} is not a directory`);
          return s;
        }
        case 'remove': {
          const s = await f.lstat(o.path).catch((err: NodeJS.ErrnoException) => {
            if (err.code === 'ENOENT') return null;
            throw err;
          });
          if (!s) return { removed: false };
          if (!s.isDirectory()) await f.unlink(o.path);
          else if (o.recursive) await f.rmTree(o.path);
          else await f.rmdir(o.path);
          return { removed: true };
        }
        case 'move': {
          if (!o.overwrite && (await f.lstat(o.to).catch(() => null)))
            throw new FsError('FILE_EXISTS', `${o.to} exists (give overwrite to replace it)`);
          await f.rename(o.from, o.to);
          return await stat(o.to);
        }
        case 'close': {
          const closed = await d.closeTransfer(o.transfer, o.discard === true);
          if (!closed && o.discard) d.log('warn', `close: no transfer ${o.transfer}`);
          return {};
        }
      }
    } catch (err) {
      throw fsFail(err, where);
    }
  };
}
