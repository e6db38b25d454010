/**
 * The serial console pump. The backend holds QEMU's console for the VM's
 * whole life: every byte goes to the bounded `console.log`, and any number of
 * viewers (connectConsole) get a live copy and may type into the console.
 *
 * The console is a pair of FIFOs (`-chardev pipe`: QEMU writes `console.out`
 * and reads `console.in`), not a socket, and mvirtd reads it at most every
 * PACE_MS. Why, measured on the 2-core TCG machine with a guest writing its
 * 16550 as fast as it can: QEMU's serial sends every byte with its own
 * write(), ~18,000 a second. On a unix stream socket each 1-byte write is a
 * buffer of its own, charged at its full size, so the socket holds only 278
 * of them before QEMU gets EAGAIN (and then the guest's UART stalls): mvirtd
 * had to read each one as it came, and spent 84–98 % of a core doing so. A
 * pipe merges small writes into its pages and holds 65,536 bytes, so mvirtd
 * can let output gather and read it in one go: a test writer doing 1-byte
 * writes at that rate was read in 99 reads over 2 s. What a pause costs a
 * viewer is PACE_MS of latency. A pipe also never drops a byte while mvirtd
 * reads: if mvirtd is away for long, the guest's console waits (as a serial
 * line with flow control would) once 64 KiB are pending.
 *
 * VMs started by an earlier mvirtd have a console socket; attach still reads it.
 */
import { execFile } from 'node:child_process';
import { constants, openSync } from 'node:fs';
import { promisify } from 'node:util';
import { Socket } from 'node:net';
import { Duplex, type Readable, type Writable } from 'node:stream';
import type { Logger } from 'pino';
import { createBoundedLog, type BoundedLog } from './console-log.js';
import { connectUnixWithRetry, type ConnectOptions } from './unix-socket.js';

/** A viewer that stops reading is dropped once this much is buffered for it. */
const MAX_VIEWER_BACKLOG = 1024 * 1024;
/** Console input the guest is not reading is dropped beyond this (the FIFO holds 64 KiB more). */
const MAX_INPUT_BACKLOG = 64 * 1024;
/** How long console output may gather before it is read (see the header). */
export const PACE_MS = 20;

export type ConsoleSource =
  /** `-chardev pipe,path=<base>`: QEMU reads `<base>.in`, writes `<base>.out`. */
  | { kind: 'pipe'; base: string }
  /** A chardev socket (VMs launched by an earlier mvirtd). */
  | { kind: 'socket'; path: string };

export interface ConsolePump {
  /** A new live view: reads console output from now on, writes go to the guest. */
  connect(): Duplex;
  readonly log: BoundedLog;
  /** Console input bytes dropped because the guest was not reading them. */
  readonly droppedInput: number;
  /** Drop the connection and all viewers (the VM keeps running). */
  close(): void;
  readonly closed: Promise<void>;
}

interface Ends {
  output: Readable & { destroy(): void };
  input: Writable;
  /** Output arrives in chunks as read; paced sources gather it first. */
  paced: boolean;
}

/** Make the console's two FIFOs for a launch (Node has no mkfifo); returns their paths. */
export async function makeConsoleFifos(base: string): Promise<string[]> {
  const fifos = [`${base}.in`, `${base}.out`];
  await promisify(execFile)('mkfifo', ['-m', '0600', ...fifos]);
  return fifos;
}

/** Both FIFOs, non-blocking, as libuv pipes. QEMU holds them open from its start. */
function openPipe(base: string): Ends {
  const out = openSync(`${base}.out`, constants.O_RDONLY | constants.O_NONBLOCK);
  let inFd: number;
  try {
    inFd = openSync(`${base}.in`, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (err) {
    new Socket({ fd: out }).destroy();
    throw err;
  }
  // A high-water mark of one byte: Node stops reading the FIFO as soon as
  // anything is buffered, so output gathers in the pipe until the next paced read.
  // (net.Socket passes stream options on to Duplex; @types/node does not list them.)
  const output = new Socket({
    fd: out,
    readable: true,
    writable: false,
    readableHighWaterMark: 1,
  } as ConstructorParameters<typeof Socket>[0]);
  const input = new Socket({ fd: inFd, readable: false, writable: true });
  output.once('close', () => input.destroy());
  return { output, input, paced: true };
}

export async function startConsolePump(opts: {
  source: ConsoleSource;
  logFile: string;
  maxLogBytes: number;
  connect: ConnectOptions;
  log: Logger;
}): Promise<ConsolePump> {
  const boundedLog = await createBoundedLog(opts.logFile, opts.maxLogBytes, opts.log);
  let ends: Ends;
  if (opts.source.kind === 'pipe') {
    ends = openPipe(opts.source.base);
  } else {
    const sock = await connectUnixWithRetry(opts.source.path, opts.connect);
    ends = { output: sock, input: sock, paced: false };
  }
  const { output, input } = ends;
  const viewers = new Set<Duplex>();
  let inputFull = false;
  let dropped = 0;
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));

  const deliver = (chunk: Buffer) => {
    boundedLog.write(chunk);
    for (const v of viewers) {
      if (v.readableLength > MAX_VIEWER_BACKLOG) {
        opts.log.warn('console viewer is not reading; dropping it');
        v.destroy();
        continue;
      }
      v.push(chunk);
    }
  };

  // A paced read waiting for its timer when the output closes is done at the
  // close instead: a timer firing after `closed` would append to console.log
  // once the folder is being removed (CI saw rm's ENOTEMPTY from that).
  let timer: NodeJS.Timeout | null = null;
  let drain = (): void => undefined;
  if (ends.paced) {
    drain = () => {
      timer = null;
      const parts: Buffer[] = [];
      for (let c: Buffer | null; (c = output.read() as Buffer | null) !== null;) parts.push(c);
      if (parts.length > 0) deliver(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    };
    output.on('readable', () => {
      if (timer) return;
      // Not unref'd: output is waiting, and the pipe is not read until then.
      timer = setTimeout(drain, PACE_MS);
    });
    output.on('end', () => {
      if (timer) clearTimeout(timer);
      drain();
      // QEMU is gone. A read-only FIFO socket does not always reach 'close' by
      // itself after 'end' (its write side never finishes), so end it here.
      output.destroy();
    });
  } else {
    output.on('data', deliver);
  }
  output.on('error', (err) => opts.log.debug({ err }, 'console error'));
  input.on('error', (err) => opts.log.debug({ err }, 'console input error'));
  output.on('close', () => {
    if (timer) clearTimeout(timer);
    drain();
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
          if (input.destroyed || !input.writable) return cb(new Error('console is closed'));
          if (input.writableLength > MAX_INPUT_BACKLOG) {
            // Dropped, not an error: an error would end this viewer's output too.
            if (!inputFull)
              opts.log.warn('the guest is not reading its console input; dropping input');
            inputFull = true;
            dropped += chunk.length;
            return cb();
          }
          inputFull = false;
          // Done once queued: the bound is on what the input holds, so the
          // viewer's own buffer never fills up behind a guest that is not reading.
          input.write(chunk);
          cb();
        },
        destroy(err, cb) {
          viewers.delete(viewer);
          cb(err);
        },
      });
      if (output.destroyed) viewer.push(null);
      else viewers.add(viewer);
      return viewer;
    },
    log: boundedLog,
    get droppedInput() {
      return dropped;
    },
    close() {
      output.destroy();
      input.destroy();
    },
    closed,
  };
}
