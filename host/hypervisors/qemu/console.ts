/**
 * The serial console pump. QEMU's chardev socket takes one client at a time
 * and drops output while nobody is connected, so the backend holds the one
 * connection for the VM's whole life: every byte goes to the bounded
 * `console.log`, and any number of viewers (connectConsole) get a live copy
 * and may type into the console.
 */
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { createBoundedLog, type BoundedLog } from '../console-log.js';
import { connectUnixWithRetry, type ConnectOptions } from './socket.js';

/** A viewer that stops reading is dropped once this much is buffered for it. */
const MAX_VIEWER_BACKLOG = 1024 * 1024;

export interface ConsolePump {
  /** A new live view: reads console output from now on, writes go to the guest. */
  connect(): Duplex;
  readonly log: BoundedLog;
  /** Drop the connection and all viewers (the VM keeps running). */
  close(): void;
  readonly closed: Promise<void>;
}

export async function startConsolePump(opts: {
  socketPath: string;
  logFile: string;
  maxLogBytes: number;
  connect: ConnectOptions;
  log: Logger;
}): Promise<ConsolePump> {
  const boundedLog = await createBoundedLog(opts.logFile, opts.maxLogBytes, opts.log);
  const sock: Socket = await connectUnixWithRetry(opts.socketPath, opts.connect);
  const viewers = new Set<Duplex>();
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));

  sock.on('data', (chunk: Buffer) => {
    boundedLog.write(chunk);
    for (const v of viewers) {
      if (v.readableLength > MAX_VIEWER_BACKLOG) {
        opts.log.warn('console viewer is not reading; dropping it');
        v.destroy();
        continue;
      }
      v.push(chunk);
    }
  });
  sock.on('error', (err) => opts.log.debug({ err }, 'console socket error'));
  sock.on('close', () => {
    for (const v of viewers) v.push(null);
    viewers.clear();
    resolveClosed();
  });

  return {
    connect() {
      const viewer: Duplex = new Duplex({
        read() {
          /* data is pushed as it arrives */
        },
        write(chunk: Buffer, _enc, cb) {
          if (sock.destroyed) return cb(new Error('console is closed'));
          sock.write(chunk, (err) => cb(err ?? null));
        },
        destroy(err, cb) {
          viewers.delete(viewer);
          cb(err);
        },
      });
      if (sock.destroyed) viewer.push(null);
      else viewers.add(viewer);
      return viewer;
    },
    log: boundedLog,
    close() {
      sock.destroy();
    },
    closed,
  };
}
