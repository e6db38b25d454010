/**
 * Client library: whole files through the fs.write / fs.read RPCs
 * (protocol/fs.ts). `sendFile` cuts a byte stream into FS_CHUNK_BYTES
 * chunks, keeps at most FS_WINDOW of them unanswered, and ends with the
 * size and sha256 it hashed on the way; `receiveFile` asks for up to
 * FS_WINDOW chunks ahead, hands them to the sink in order and checks the
 * guest's size and sha256 against its own. Memory stays within the window
 * whatever the file's size. The CLI's `mvirt cp` is built on these.
 */
import { createHash, randomBytes } from 'node:crypto';
import { MvirtError } from './errors.js';
import { FS_CHUNK_BYTES, FS_WINDOW, type FileEnd } from './fs.js';
import type { ParamsOf, ResultOf } from './rpc.js';

/** The one call these need (MvirtClient has it). */
export interface FsCaller {
  call(method: 'fs.write', params: ParamsOf<'fs.write'>): Promise<ResultOf<'fs.write'>>;
  call(method: 'fs.read', params: ParamsOf<'fs.read'>): Promise<ResultOf<'fs.read'>>;
}

export const newTransferId = (): string => randomBytes(12).toString('hex');

/** TRANSFER_BUSY (mvirtd's buffer is full of other transfers): wait and send again. */
const BUSY_RETRY_MS = 50;
const BUSY_RETRIES = 200;

async function callRetrying<T>(f: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await f();
    } catch (err) {
      if (!(err instanceof MvirtError && err.code === 'TRANSFER_BUSY') || i >= BUSY_RETRIES)
        throw err;
      await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
    }
  }
}

/** Cut a stream into chunks of exactly `size` bytes (the last may be shorter or empty). */
async function* rechunk(source: AsyncIterable<Uint8Array>, size: number) {
  let parts: Buffer[] = [];
  let have = 0;
  for await (const c of source) {
    let b = Buffer.from(c.buffer, c.byteOffset, c.byteLength);
    while (have + b.length >= size) {
      const take = size - have;
      parts.push(b.subarray(0, take));
      yield Buffer.concat(parts);
      parts = [];
      have = 0;
      b = b.subarray(take);
    }
    if (b.length > 0) {
      parts.push(Buffer.from(b));
      have += b.length;
    }
  }
  yield Buffer.concat(parts);
}

export interface SendFileOptions {
  vm: string;
  /** Absolute path in the guest (the directory to unpack into with `unpack`). */
  path: string;
  source: AsyncIterable<Uint8Array>;
  mode?: number;
  uid?: number;
  gid?: number;
  unpack?: 'tar';
  /** Go on with this transfer's partial file: the source must start at byte 0 again. */
  resume?: { transfer: string };
  onProgress?: (bytes: number) => void;
}

/** Write a stream into a guest file; resolves with its size and sha256 once it is in place. */
export async function sendFile(c: FsCaller, o: SendFileOptions): Promise<FileEnd> {
  const transfer = o.resume?.transfer ?? newTransferId();
  const hash = createHash('sha256');
  const open = {
    path: o.path,
    ...(o.mode !== undefined ? { mode: o.mode } : {}),
    ...(o.uid !== undefined ? { uid: o.uid } : {}),
    ...(o.gid !== undefined ? { gid: o.gid } : {}),
    ...(o.unpack ? { unpack: o.unpack } : {}),
    ...(o.resume ? { resume: true } : {}),
  };
  const inFlight = new Set<Promise<unknown>>();
  let failed: unknown = null;
  let seq = 0;
  let sent = 0;
  const send = (p: Omit<ParamsOf<'fs.write'>, 'vm' | 'transfer' | 'seq'>) => {
    const s = seq++;
    const call = callRetrying(() => c.call('fs.write', { vm: o.vm, transfer, seq: s, ...p }));
    const tracked = call.then(
      () => {
        inFlight.delete(tracked);
      },
      (err: unknown) => {
        inFlight.delete(tracked);
        failed ??= err;
      },
    );
    inFlight.add(tracked);
    return call;
  };
  // Resume: ask where the partial file ends; skip (and hash) that much of the source.
  let skip = 0;
  if (o.resume) skip = (await send({ data: '', open })).written;
  let pending: Buffer | null = null;
  const chunks = rechunk(o.source, FS_CHUNK_BYTES);
  let pos = 0;
  try {
    await pump();
  } catch (err) {
    // The source failed: what is on its way lands first (a resume goes on from there).
    await Promise.allSettled(inFlight);
    throw err;
  }
  async function pump(): Promise<void> {
    for await (const chunk of chunks) {
      let b = chunk;
      hash.update(b);
      if (pos < skip) {
        const drop = Math.min(skip - pos, b.length);
        pos += drop;
        b = b.subarray(drop);
        if (b.length === 0 && chunk.length === FS_CHUNK_BYTES) continue;
      }
      pos += b.length;
      if (pending) {
        while (inFlight.size >= FS_WINDOW && !failed) await Promise.race(inFlight);
        if (failed) break;
        const data = pending;
        const first = seq === 0;
        const call = send({ data: data.toString('base64'), ...(first ? { open } : {}) }).then(
          () => {
            sent += data.length;
            o.onProgress?.(sent + skip);
          },
          () => undefined,
        );
        // mvirtd knows the transfer once seq 0 is in: the others wait for it.
        if (first) await call;
      }
      pending = b;
    }
  }
  await Promise.all(inFlight);
  if (failed) throw failed;
  const end = { size: pos, sha256: hash.digest('hex') };
  const last = await send({
    data: (pending ?? Buffer.alloc(0)).toString('base64'),
    ...(seq === 0 ? { open } : {}),
    final: end,
  });
  o.onProgress?.(pos);
  if (!last.complete || last.complete.sha256 !== end.sha256 || last.complete.size !== end.size)
    throw new MvirtError('TRANSFER_MISMATCH', `the guest did not confirm ${o.path} as written`);
  return end;
}

export interface ReceiveFileOptions {
  vm: string;
  path: string;
  /** A directory, as a tar archive of what it holds. */
  pack?: 'tar';
  /** Takes each chunk in order; the next waits for its promise. */
  sink: (chunk: Buffer) => Promise<void> | void;
  onProgress?: (bytes: number) => void;
}

/** Read a guest file (or a directory as tar) into `sink`; resolves with its checked size and sha256. */
export async function receiveFile(c: FsCaller, o: ReceiveFileOptions): Promise<FileEnd> {
  const transfer = newTransferId();
  const hash = createHash('sha256');
  const asked: Promise<ResultOf<'fs.read'>>[] = [];
  let next = 0;
  let eof = false;
  const ask = () => {
    const s = next++;
    const p = callRetrying(() =>
      c.call('fs.read', {
        vm: o.vm,
        transfer,
        seq: s,
        ...(s === 0 ? { open: { path: o.path, ...(o.pack ? { pack: o.pack } : {}) } } : {}),
      }),
    );
    // Asked past the end: those answers are refused, and not needed.
    p.catch(() => undefined);
    asked.push(p);
  };
  ask();
  let bytes = 0;
  for (let i = 0; ; i++) {
    // Ask ahead once the first answer shows the path is readable.
    while (i > 0 && !eof && next < i + FS_WINDOW) ask();
    const r = await asked[i]!;
    const data = Buffer.from(r.data, 'base64');
    hash.update(data);
    bytes += data.length;
    if (data.length > 0) await o.sink(data);
    o.onProgress?.(bytes);
    if (!r.eof) {
      if (i === 0) ask();
      continue;
    }
    eof = true;
    // The asks past the end are refused; let them finish before we go.
    await Promise.allSettled(asked);
    const sha256 = hash.digest('hex');
    if (!r.end || r.end.size !== bytes || r.end.sha256 !== sha256)
      throw new MvirtError(
        'TRANSFER_MISMATCH',
        `${o.path}: received ${bytes} bytes with sha256 ${sha256}, the guest says ${r.end?.size} with ${r.end?.sha256}`,
      );
    return { size: bytes, sha256 };
  }
}
