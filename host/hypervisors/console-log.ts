/**
 * A bounded append-only log file for a VM's serial console. A chatty or
 * hostile guest must not fill the host disk, so when the file would exceed
 * maxBytes it is rewritten with only its newest half (cut at a line start when
 * one is near) before appending. Writes are queued and coalesced so that the
 * file always reflects arrival order and the event loop never blocks on disk.
 * Backend-neutral: any hypervisor's console pump (or the daemon) can reuse it.
 */
import { open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';

export interface BoundedLog {
  write(chunk: Buffer | string): void;
  /** Resolves once everything written so far is on disk. */
  flush(): Promise<void>;
  /** Current file size as far as this writer knows (after queued writes land). */
  readonly size: number;
}

export async function createBoundedLog(
  file: string,
  maxBytes: number,
  log?: Logger,
): Promise<BoundedLog> {
  if (!Number.isInteger(maxBytes) || maxBytes < 2) throw new RangeError('maxBytes must be >= 2');
  let size = 0;
  try {
    size = (await stat(file)).size;
  } catch {
    size = 0;
  }
  let queued: Buffer[] = [];
  let chain: Promise<void> = Promise.resolve();
  let scheduled = false;

  const keepBytes = Math.floor(maxBytes / 2);

  /** The newest `keep` bytes of data, starting after a newline when one is in the first quarter. */
  const tail = (data: Buffer, keep: number): Buffer => {
    let cut = data.subarray(Math.max(0, data.length - keep));
    const nl = cut.indexOf(0x0a);
    if (nl >= 0 && nl < cut.length / 4) cut = cut.subarray(nl + 1);
    return cut;
  };

  const flushQueued = async () => {
    scheduled = false;
    const data = Buffer.concat(queued);
    queued = [];
    if (data.length === 0) return;
    if (size + data.length <= maxBytes) {
      const fh = await open(file, 'a');
      try {
        await fh.write(data);
      } finally {
        await fh.close();
      }
      size += data.length;
      return;
    }
    // Over the cap: keep the newest half of old + new, written atomically.
    let old: Buffer = Buffer.alloc(0);
    try {
      old = await readFile(file);
    } catch {
      /* no file yet */
    }
    const kept = tail(Buffer.concat([old, data]), keepBytes);
    const tmp = `${file}.trim`;
    await writeFile(tmp, kept);
    await rename(tmp, file);
    size = kept.length;
  };

  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    chain = chain.then(flushQueued).catch((err: unknown) => {
      log?.warn({ err, file }, 'console log write failed');
    });
  };

  return {
    write(chunk) {
      queued.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      schedule();
    },
    flush: () => chain,
    get size() {
      return size;
    },
  };
}

/** The last `bytes` of a log file, trimmed; '' when it cannot be read (a launch failure's QEMU log). */
export async function logTail(file: string, bytes = 2048): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.slice(-bytes).trim();
  } catch {
    return '';
  }
}
