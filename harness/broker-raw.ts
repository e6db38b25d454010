/**
 * A hand-rolled MQTT 3.1.1 encoder and packet reader for tests that must send
 * what a well-behaved client library refuses to send (NUL in topics, forged
 * headers, oversized lengths, half packets) and read the broker's raw answers.
 */
import net from 'node:net';
import { TEST_ADMIN } from './test-admin.js';
import { once } from 'node:events';

export function encodeLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

const str = (s: string | Buffer): Buffer => {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
};

const packet = (first: number, body: Buffer): Buffer =>
  Buffer.concat([Buffer.from([first]), encodeLength(body.length), body]);

export interface ConnectFields {
  clientId: string | Buffer;
  username?: string;
  password?: string;
  will?: { topic: string; payload: string; retain?: boolean; qos?: 0 | 1 };
  keepalive?: number;
  clean?: boolean;
}

export function encodeConnect(c: ConnectFields): Buffer {
  let flags = c.clean === false ? 0 : 0x02;
  const payload: Buffer[] = [str(c.clientId)];
  if (c.will) {
    flags |= 0x04 | ((c.will.qos ?? 0) << 3) | (c.will.retain ? 0x20 : 0);
    payload.push(str(c.will.topic), str(c.will.payload));
  }
  if (c.username !== undefined) {
    flags |= 0x80;
    payload.push(str(c.username));
  }
  if (c.password !== undefined) {
    flags |= 0x40;
    payload.push(str(c.password));
  }
  const keepalive = Buffer.alloc(2);
  keepalive.writeUInt16BE(c.keepalive ?? 0);
  const header = Buffer.concat([str('MQTT'), Buffer.from([4, flags]), keepalive]);
  return packet(0x10, Buffer.concat([header, ...payload]));
}

export function encodePublish(
  topic: string | Buffer,
  payload: string | Buffer,
  o: { qos?: 0 | 1 | 2; retain?: boolean; messageId?: number } = {},
): Buffer {
  const qos = o.qos ?? 0;
  const parts = [str(topic)];
  if (qos > 0) {
    const id = Buffer.alloc(2);
    id.writeUInt16BE(o.messageId ?? 1);
    parts.push(id);
  }
  parts.push(typeof payload === 'string' ? Buffer.from(payload) : payload);
  return packet(0x30 | (qos << 1) | (o.retain ? 1 : 0), Buffer.concat(parts));
}

export function encodeSubscribe(
  messageId: number,
  filters: Array<string | Buffer>,
  qos: 0 | 1 | 2 = 0,
): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(messageId);
  return packet(0x82, Buffer.concat([id, ...filters.flatMap((f) => [str(f), Buffer.from([qos])])]));
}

export interface RawPacket {
  type: number;
  flags: number;
  body: Buffer;
}

/** The whole packets at the start of buf, and what is left of an incomplete one. */
export function splitPackets(buf: Buffer): { packets: RawPacket[]; rest: Buffer } {
  const packets: RawPacket[] = [];
  for (;;) {
    if (buf.length < 2) return { packets, rest: buf };
    let len = 0;
    let mul = 1;
    let i = 1;
    for (;;) {
      if (i >= buf.length) return { packets, rest: buf };
      const b = buf[i++]!;
      len += (b & 0x7f) * mul;
      mul *= 128;
      if (!(b & 0x80)) break;
    }
    if (buf.length < i + len) return { packets, rest: buf };
    packets.push({ type: buf[0]! >> 4, flags: buf[0]! & 0x0f, body: buf.subarray(i, i + len) });
    buf = buf.subarray(i + len);
  }
}

/** Reads whole packets from a socket; `next()` waits for the next one or the close. */
export class RawClient {
  readonly socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #queue: RawPacket[] = [];
  #waiters: Array<(p: RawPacket | null) => void> = [];
  #closed = false;
  /** TCP controllers log in: handshake() adds the test admin unless told a username. */
  #login = false;
  readonly closed: Promise<void>;

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => this.#onData(d));
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.#closed = true;
        for (const w of this.#waiters.splice(0)) w(null);
        resolve();
      }),
    );
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    const s = net.connect(port, host);
    await once(s, 'connect');
    const c = new RawClient(s);
    c.#login = true;
    return c;
  }

  static async connectUnix(path: string): Promise<RawClient> {
    const s = net.connect(path);
    await once(s, 'connect');
    return new RawClient(s);
  }

  #onData(d: Buffer): void {
    const { packets, rest } = splitPackets(Buffer.concat([this.#buf, d]));
    this.#buf = rest;
    for (const p of packets) {
      const w = this.#waiters.shift();
      if (w) w(p);
      else this.#queue.push(p);
    }
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  /** The next packet, or null when the connection closed first. */
  next(): Promise<RawPacket | null> {
    const p = this.#queue.shift();
    if (p) return Promise.resolve(p);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** CONNECT and return the CONNACK return code (null when closed without one). */
  async handshake(c: ConnectFields): Promise<number | null> {
    const login =
      this.#login && !('username' in c)
        ? { username: TEST_ADMIN.username, password: TEST_ADMIN.password }
        : {};
    this.send(encodeConnect({ ...login, ...c }));
    const p = await this.next();
    if (!p) return null;
    if (p.type !== 2) throw new Error(`expected CONNACK, got type ${p.type}`);
    return p.body[1]!;
  }

  /** SUBSCRIBE and return the granted codes (0x80 = refused), or null when closed. */
  async subscribe(
    filters: Array<string | Buffer>,
    messageId = 1,
    qos: 0 | 1 | 2 = 0,
  ): Promise<number[] | null> {
    this.send(encodeSubscribe(messageId, filters, qos));
    const p = await this.next();
    if (!p) return null;
    if (p.type !== 9) throw new Error(`expected SUBACK, got type ${p.type}`);
    return [...p.body.subarray(2)];
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export const CONNACK = {
  ACCEPTED: 0,
  IDENTIFIER_REJECTED: 2,
  BAD_USERNAME_OR_PASSWORD: 4,
  NOT_AUTHORIZED: 5,
} as const;
