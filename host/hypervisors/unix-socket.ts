/**
 * Connect to a unix socket that a just-spawned process has not created yet.
 * QEMU creates its chardev/QMP sockets some milliseconds after exec; instead
 * of sleeping a fixed time we retry ENOENT/ECONNREFUSED with a short
 * exponential backoff, and give up at once when the caller aborts (the
 * process died) or the deadline passes.
 */
import net from 'node:net';
import { MvirtError } from '../../protocol/errors.js';

export interface ConnectOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** First retry delay; doubles up to maxDelayMs. */
  initialDelayMs?: number;
  maxDelayMs?: number;
}

const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

function connectOnce(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path });
    const onError = (err: Error) => {
      sock.destroy();
      reject(err);
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      resolve(sock);
    });
  });
}

export async function connectUnixWithRetry(
  path: string,
  opts: ConnectOptions,
): Promise<net.Socket> {
  const deadline = Date.now() + opts.timeoutMs;
  let delay = opts.initialDelayMs ?? 5;
  const maxDelay = opts.maxDelayMs ?? 100;
  for (;;) {
    if (opts.signal?.aborted) throw abortError(path, opts.signal);
    try {
      return await connectOnce(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (!RETRYABLE.has(code)) {
        throw new MvirtError('HYPERVISOR_ERROR', `connect ${path}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      if (Date.now() + delay > deadline) {
        throw new MvirtError('TIMEOUT', `socket ${path} not ready after ${opts.timeoutMs} ms`, {
          cause: err,
        });
      }
    }
    await abortableDelay(delay, opts.signal);
    delay = Math.min(delay * 2, maxDelay);
  }
}

function abortError(path: string, signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  return new MvirtError('HYPERVISOR_ERROR', `gave up connecting to ${path}`);
}

function abortableDelay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
