/**
 * The fsWrite and fsRead messages (protocol/fs.ts): transfers, chunk by chunk.
 *
 * A write goes into a hidden partial file beside its target
 * (`.<name>.mvirt-<transfer>.part`), hashed as it grows, and is renamed into
 * place only once its size and sha256 match the last chunk's: a transfer cut
 * anywhere (VM killed, agent or controller gone) leaves at most that partial
 * file, which a resumed transfer (`open.resume`) goes on with. A read hashes
 * what it sends from offset 0 and ends with the size and sha256. Chunks of one
 * transfer are handled one after the other in seq order; transfers nobody
 * touched for `idleMs` are closed (a write's partial file stays). A directory
 * is packed or unpacked by tar (fs-tar.ts).
 */
import { createHash, type Hash } from 'node:crypto';
import path from 'node:path';
import type { FileEnd, FsReadMsg, FsWriteMsg } from '../protocol/fs.js';
import { FsError, fsFail, guestFs } from './fs-errors.js';
import { createTar, type PullReader } from './fs-tar.js';
import type { GuestFile } from './platform/files.js';
import type { Platform } from './platform/types.js';

export interface TransferOptions {
  /** A transfer nobody touched this long is closed. */
  idleMs: number;
}

/** Where a write's bytes wait until they are complete and checked. */
export const partPath = (target: string, transfer: string): string =>
  path.join(path.dirname(target), `.${path.basename(target)}.mvirt-${transfer}.part`);

interface Base {
  transfer: string;
  nextSeq: number;
  /** The previous chunk's work: chunks run one after the other. */
  chain: Promise<unknown>;
  timer: NodeJS.Timeout | null;
}
interface WriteT extends Base {
  kind: 'write';
  target: string;
  part: string;
  file: GuestFile | null;
  written: number;
  hash: Hash;
  open: NonNullable<FsWriteMsg['open']>;
}
interface ReadT extends Base {
  kind: 'read';
  file: GuestFile | null;
  /** A packed directory: tar's output, read as asked. */
  pack: PullReader | null;
  pos: number;
  hash: Hash;
}
type Transfer = WriteT | ReadT;

export function createTransfers(
  platform: Platform,
  log: (level: 'warn' | 'info', m: string) => void,
  opts: TransferOptions,
) {
  const transfers = new Map<string, Transfer>();
  const tar = createTar(platform);
  const fs = () => guestFs(platform);

  function touch(t: Transfer): void {
    if (t.timer) clearTimeout(t.timer);
    t.timer = setTimeout(() => {
      log('info', `transfer ${t.transfer}: idle for ${opts.idleMs} ms; closed`);
      void end(t);
    }, opts.idleMs);
    t.timer.unref?.();
  }

  async function end(t: Transfer, discard = false): Promise<void> {
    if (transfers.get(t.transfer) === t) transfers.delete(t.transfer);
    if (t.timer) clearTimeout(t.timer);
    t.timer = null;
    const f = t.file;
    t.file = null;
    await f?.close().catch(() => undefined);
    if (t.kind === 'read') t.pack?.kill();
    if (discard && t.kind === 'write')
      await fs()
        .unlink(t.part)
        .catch(() => undefined);
  }

  /** Run `work` after the transfer's previous chunk; a failure ends the transfer. */
  function step<T>(t: Transfer, seq: number, work: () => Promise<T>): Promise<T> {
    const run = t.chain.then(async () => {
      if (transfers.get(t.transfer) !== t)
        throw new FsError('TRANSFER_NOT_FOUND', `transfer ${t.transfer} has ended`);
      if (seq !== t.nextSeq)
        throw new FsError(
          'TRANSFER_OFFSET',
          `transfer ${t.transfer}: chunk ${seq} came where ${t.nextSeq} was due`,
        );
      t.nextSeq++;
      touch(t);
      return work();
    });
    t.chain = run.catch(async () => {
      await end(t);
    });
    return run;
  }

  function find(transfer: string, kind: Transfer['kind']): Transfer {
    const t = transfers.get(transfer);
    if (!t || t.kind !== kind)
      throw new FsError(
        'TRANSFER_NOT_FOUND',
        `no ${kind} transfer ${transfer} here (it ended, or the agent restarted): start again at seq 0`,
      );
    return t;
  }

  /** Hash a file's first `length` bytes (a resumed transfer's hash covers them too). */
  async function hashPrefix(file: GuestFile, length: number, hash: Hash): Promise<void> {
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (let pos = 0; pos < length;) {
      const n = await file.read(buf.subarray(0, Math.min(buf.length, length - pos)), pos);
      if (n === 0) throw new FsError('TRANSFER_OFFSET', `the file ended at ${pos} of ${length}`);
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  }

  // ------------------------------------------------------------------ write

  async function openWrite(t: WriteT): Promise<void> {
    const o = t.open;
    const f = fs();
    if (!o.unpack) {
      const st = await f.lstat(t.target).catch(() => null);
      if (st?.isDirectory())
        throw new FsError('FILE_TYPE', `${t.target} is a directory: name the file to write`);
    }
    if (o.resume || o.offset !== undefined) {
      const file = await f.open(t.part, 'update').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' && !o.offset) return null;
        throw fsFail(err, `${t.part}`);
      });
      if (file) {
        t.file = file;
        const size = (await file.stat()).size;
        const at = o.offset ?? size;
        if (at > size)
          throw new FsError(
            'TRANSFER_OFFSET',
            `the partial file of ${t.target} has ${size} bytes, fewer than offset ${at}`,
          );
        if (at < size) await file.truncate(at);
        await hashPrefix(file, at, t.hash);
        t.written = at;
        return;
      }
    }
    t.file = await f.open(t.part, 'create', 0o600).catch((err: unknown) => {
      throw fsFail(err, t.target);
    });
  }

  async function writeAll(t: WriteT, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const n = await t.file!.write(data.subarray(done), t.written + done);
      done += n;
    }
    t.hash.update(data);
    t.written += data.length;
  }

  async function finish(t: WriteT, want: FileEnd): Promise<FileEnd> {
    const f = fs();
    const sha256 = t.hash.digest('hex');
    if (t.written !== want.size || sha256 !== want.sha256) {
      await end(t, true);
      throw new FsError(
        'TRANSFER_MISMATCH',
        `${t.target}: received ${t.written} bytes with sha256 ${sha256}, expected ${want.size} bytes with ${want.sha256}; nothing was put in place`,
      );
    }
    await t.file!.sync();
    await t.file!.close();
    t.file = null;
    const o = t.open;
    if (o.unpack) {
      await f.mkdir(t.target, { recursive: true, mode: o.mode ?? 0o755 });
      const why = await tar.unpack(t.part, t.target);
      await f.unlink(t.part).catch(() => undefined);
      if (why)
        throw new FsError(
          /No space left|Disk quota/i.test(why) ? 'GUEST_DISK_FULL' : 'FILE_PERMISSION',
          `unpacking into ${t.target}: ${why}`,
        );
      if (o.mode !== undefined) await f.chmod(t.target, o.mode);
    } else {
      const old = await f.lstat(t.target).catch(() => null);
      await f.chmod(t.part, o.mode ?? (old?.isFile() ? old.mode & 0o7777 : 0o644));
      if (o.uid !== undefined || o.gid !== undefined)
        await f.chown(t.part, o.uid ?? old?.uid ?? 0, o.gid ?? old?.gid ?? 0);
      await f.rename(t.part, t.target);
    }
    if (o.unpack && (o.uid !== undefined || o.gid !== undefined))
      await f.chown(t.target, o.uid ?? 0, o.gid ?? 0);
    await end(t);
    return { size: t.written, sha256 };
  }

  function write(m: FsWriteMsg): Promise<{ written: number; complete?: FileEnd }> {
    let t: WriteT;
    if (m.open) {
      const old = transfers.get(m.transfer);
      if (old) void end(old);
      t = {
        kind: 'write',
        transfer: m.transfer,
        nextSeq: 0,
        chain: Promise.resolve(),
        timer: null,
        target: m.open.path,
        part: partPath(m.open.path, m.transfer),
        file: null,
        written: 0,
        hash: createHash('sha256'),
        open: m.open,
      };
      transfers.set(m.transfer, t);
    } else {
      try {
        t = find(m.transfer, 'write') as WriteT;
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    return step(t, m.seq, async () => {
      try {
        if (m.open) await openWrite(t);
        if (m.data.length > 0) await writeAll(t, m.data);
        if (!m.final) return { written: t.written };
        return { written: t.written, complete: await finish(t, m.final) };
      } catch (err) {
        throw fsFail(err, t.target);
      }
    });
  }

  // ------------------------------------------------------------------- read

  async function openRead(t: ReadT, o: NonNullable<FsReadMsg['open']>): Promise<void> {
    const f = fs();
    const st = await f.stat(o.path);
    if (o.pack) {
      if (!st.isDirectory())
        throw new FsError('FILE_TYPE', `${o.path} is not a directory: copy it as a file`);
      t.pack = tar.pack(o.path);
      return;
    }
    if (st.isDirectory())
      throw new FsError('FILE_TYPE', `${o.path} is a directory: pack it (open.pack tar)`);
    // A FIFO or device would hold one of Node's few I/O threads for as long as it blocks.
    if (!st.isFile()) throw new FsError('FILE_TYPE', `${o.path} is not a regular file`);
    t.file = await f.open(o.path, 'read');
    if (!(await t.file.stat()).isFile())
      throw new FsError('FILE_TYPE', `${o.path} is not a regular file`);
    if (o.offset) {
      await hashPrefix(t.file, o.offset, t.hash);
      t.pos = o.offset;
    }
  }

  async function readChunk(t: ReadT, length: number): Promise<Buffer> {
    if (t.pack) return t.pack.read(length);
    const buf = Buffer.allocUnsafe(length);
    let have = 0;
    while (have < length) {
      const n = await t.file!.read(buf.subarray(have), t.pos + have);
      if (n === 0) break;
      have += n;
    }
    return buf.subarray(0, have);
  }

  function read(m: FsReadMsg): Promise<{ data: Buffer; eof: boolean; end?: FileEnd }> {
    let t: ReadT;
    if (m.open) {
      const old = transfers.get(m.transfer);
      if (old) void end(old);
      t = {
        kind: 'read',
        transfer: m.transfer,
        nextSeq: 0,
        chain: Promise.resolve(),
        timer: null,
        file: null,
        pack: null,
        pos: 0,
        hash: createHash('sha256'),
      };
      transfers.set(m.transfer, t);
    } else {
      try {
        t = find(m.transfer, 'read') as ReadT;
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    const where = m.open?.path ?? `transfer ${m.transfer}`;
    return step(t, m.seq, async () => {
      try {
        if (m.open) await openRead(t, m.open);
        const data = await readChunk(t, m.length);
        t.hash.update(data);
        t.pos += data.length;
        if (data.length === m.length) return { data, eof: false };
        if (t.pack) {
          const why = await t.pack.done;
          if (why) throw new FsError('FILE_PERMISSION', `packing ${where}: ${why}`);
        }
        const endOf = { size: t.pos, sha256: t.hash.digest('hex') };
        await end(t);
        return { data, eof: true, end: endOf };
      } catch (err) {
        throw fsFail(err, where);
      }
    });
  }

  return {
    write,
    read,
    /** End a transfer (`discard`: a write's partial file goes too); false when there is none. */
    close: async (transfer: string, discard: boolean): Promise<boolean> => {
      const t = transfers.get(transfer);
      if (!t) return false;
      await end(t, discard);
      return true;
    },
    /** Transfers open now. */
    count: () => transfers.size,
    /** Close every transfer (partial files stay). */
    closeAll: async () => {
      for (const t of [...transfers.values()]) await end(t);
    },
  };
}
