/**
 * virtio-serial: find the port the host named `mvirt.agent` and open it as a
 * Duplex.
 *
 * Why not fs streams: a read on a virtio port blocks in the kernel, and so
 * would a write while the host side is disconnected; on libuv's thread pool a
 * blocked write cannot be cancelled and would later put a stale CONNECT in the
 * middle of a new session. The port supports poll(), so we hand the fd (made
 * non-blocking) to a libuv pipe handle instead: epoll then reports EOF when
 * the host side drops (the kernel returns 0 from read() while the host is not
 * connected) and a write simply waits for POLLOUT. Node has no public API for
 * wrapping a character device that way; `process.binding('pipe_wrap')` is the
 * documented-deprecated but present path (Node 20), and net.Socket accepts the
 * handle. No library does this for us.
 *
 * Writes go to the port one buffer per packet (PortSocket below).
 */
import { constants, openSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';

const SYS_PORTS = '/sys/class/virtio-ports';

/** /dev path of the virtio-serial port with this name, or null. */
export function findVirtioPort(name: string, sysDir = SYS_PORTS): string | null {
  let entries: string[];
  try {
    entries = readdirSync(sysDir);
  } catch {
    return null;
  }
  for (const e of entries.sort()) {
    try {
      if (readFileSync(path.join(sysDir, e, 'name'), 'utf8').trim() === name) return `/dev/${e}`;
    } catch {
      // a port without a name: not ours
    }
  }
  return null;
}

interface PipeHandle {
  open(fd: number): number;
}
interface PipeWrap {
  Pipe: new (type: number) => PipeHandle;
  constants: { SOCKET: number };
}

/**
 * A socket that hands its handle one buffer per batch of writes. The virtio
 * console driver has no write_iter, so the kernel runs a writev as one port
 * write per buffer, and each goes to the host as a transfer of its own.
 * mqtt.js writes a packet in pieces (corked: type, length, topic, id,
 * payload), so a 200-byte PUBLISH crossed as six transfers, spread over up
 * to 11 ms under TCG (mvirtd's reads, 2026-12-07); joined, it is one.
 */
export class PortSocket extends Socket {
  override _writev(
    chunks: Array<{ chunk: unknown; encoding: BufferEncoding }>,
    cb: (error?: Error | null) => void,
  ): void {
    const bufs = chunks.map(({ chunk, encoding }) =>
      Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string, encoding),
    );
    // 'buffer' is what Writable itself passes with a Buffer (not a BufferEncoding).
    this._write(Buffer.concat(bufs), 'buffer' as BufferEncoding, cb);
  }
}

/** Wrap a pollable character device (or FIFO, pty…) as a socket-like Duplex. */
export function openPollableDevice(device: string): Duplex {
  const fd = openSync(device, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  try {
    const binding = (process as unknown as { binding(name: string): unknown }).binding;
    const { Pipe, constants: pc } = binding('pipe_wrap') as PipeWrap;
    const handle = new Pipe(pc.SOCKET);
    const rc = handle.open(fd);
    if (rc !== 0) throw new Error(`cannot poll ${device} (libuv error ${rc})`);
    // `handle` is not in @types/node's SocketConstructorOpts but is honoured by net.Socket.
    return new PortSocket({
      handle,
      readable: true,
      writable: true,
    } as unknown as ConstructorParameters<typeof Socket>[0]);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
