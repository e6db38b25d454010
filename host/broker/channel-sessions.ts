/**
 * Successive MQTT sessions on one agent channel.
 *
 * A virtio-serial port is one byte pipe for the life of the VM: QEMU's host
 * end outlives mvirtd restarts and the agent's own reconnects, and nothing in
 * the pipe says "a new session starts here". Two things follow, both seen in
 * CI (kill -9 of mvirtd mid-job, the job never finished):
 *  - QEMU keeps bytes it took from the guest but had not yet written to the
 *    socket and hands them to the next host end, so an attach can begin with
 *    the tail of a packet from the previous session;
 *  - a guest client that gave up (EOF while the host was away, a connect
 *    timeout) can leave its CONNECT in that queue, and the agent's next client
 *    sends its own right after. To a broker a second CONNECT is a protocol
 *    error; closing the channel for it flips the port's host-connected state,
 *    which makes the guest's current client give up as well, and the cycle
 *    ran for minutes.
 *
 * So on this transport the host skips bytes up to the first thing that looks
 * like a CONNECT (header 0x10, a length, "MQTT", level 4 or 5), and a CONNECT
 * at a packet boundary inside a live session is the agent starting over: the
 * old session ends, and what the broker still writes for it goes nowhere (the
 * new client must not read a CONNACK meant for the old one: mqtt.js drops the
 * connection on a duplicate CONNACK), and a new session begins with that
 * CONNECT. Starting over is budgeted; a session the broker ends (refusal, ACL,
 * a bad packet) closes the channel, as it always did, and the owner
 * re-attaches.
 *
 * Hand-written: no MQTT library splits successive sessions out of one stream.
 * The size caps stay with the frame guard above each session.
 */
import { Duplex } from 'node:stream';
import type { AgentChannelHandle } from './types.js';

export interface ChannelSessionsOptions {
  /** Largest CONNECT accepted as the start of a session (the broker's maxConnectSize). */
  maxConnectSize: number;
  /** A channel whose first session has not begun by then is closed (the broker's CONNECT timeout). */
  connectTimeoutMs: number;
  /** Restarts allowed at once; beyond it the channel closes. */
  restartBurst?: number;
  /** Restarts allowed per second, sustained. */
  restartsPerS?: number;
  now?: () => number;
}

export interface ChannelSessionsEvents {
  /** Bytes before a session's CONNECT that belonged to no session. */
  skipped(bytes: number): void;
  /** The agent began a new session on the stream (the previous one ended). */
  restarted(): void;
  /** The stream is closed because the guest restarts its session too often. */
  violation(reason: string): void;
}

const CONNECT_HEADER = 0x10;
const CONNECT = 1;
/** "\0\x04MQTT": the protocol name that follows a CONNECT's remaining length. */
const PROTOCOL_NAME = Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54]);
/** Smallest CONNECT body: name (6) + level + flags + keepalive (2) + client id length (2). */
const MIN_CONNECT_BODY = 12;
/** Header + 4 length bytes + name + level: what must be seen to recognise a CONNECT. */
const SIGNATURE_MAX = 1 + 4 + PROTOCOL_NAME.length + 1;

type Found = { at: number } | { keepFrom: number };

/** Where the first CONNECT starts in buf, or from where to keep bytes (a CONNECT may straddle reads). */
export function findConnect(buf: Buffer, maxConnectSize: number): Found {
  for (let i = buf.indexOf(CONNECT_HEADER); i >= 0; i = buf.indexOf(CONNECT_HEADER, i + 1)) {
    if (buf.length - i < SIGNATURE_MAX && !complete(buf, i)) return { keepFrom: i };
    if (isConnectAt(buf, i, maxConnectSize)) return { at: i };
  }
  return { keepFrom: buf.length };
}

/** Whether buf holds enough after i to decide (a short varint leaves room for the rest). */
function complete(buf: Buffer, i: number): boolean {
  const len = lengthAt(buf, i + 1);
  return len !== null && len.end + PROTOCOL_NAME.length + 1 <= buf.length;
}

/** MQTT's variable byte integer at i: value and the index after it; null if cut off or malformed. */
function lengthAt(buf: Buffer, i: number): { value: number; end: number } | null {
  let value = 0;
  for (let k = 0; k < 4; k++) {
    const b = buf[i + k];
    if (b === undefined) return null;
    value += (b & 0x7f) * 128 ** k;
    if ((b & 0x80) === 0) return { value, end: i + k + 1 };
  }
  return null;
}

function isConnectAt(buf: Buffer, i: number, maxConnectSize: number): boolean {
  const len = lengthAt(buf, i + 1);
  if (len === null || len.value < MIN_CONNECT_BODY || len.value > maxConnectSize) return false;
  const name = buf.subarray(len.end, len.end + PROTOCOL_NAME.length);
  const level = buf[len.end + PROTOCOL_NAME.length];
  return name.equals(PROTOCOL_NAME) && (level === 4 || level === 5);
}

/**
 * Packet boundaries of one session: walk() returns the index of a CONNECT
 * header after the session's first packet, or -1. It reads only fixed headers.
 */
function createBoundaryWalker() {
  let packets = 0;
  let inLength = false;
  let lengthBytes = 0;
  let length = 0;
  let skip = 0;
  return function walk(chunk: Buffer): number {
    let i = 0;
    while (i < chunk.length) {
      if (skip > 0) {
        const take = Math.min(skip, chunk.length - i);
        skip -= take;
        i += take;
        continue;
      }
      const b = chunk[i]!;
      if (!inLength) {
        if (b >> 4 === CONNECT && packets > 0) return i;
        inLength = true;
        lengthBytes = 0;
        length = 0;
        i++;
        continue;
      }
      length += (b & 0x7f) * 128 ** lengthBytes++;
      i++;
      // A malformed length is the frame guard's to refuse; here it just ends the header.
      if (b & 0x80 && lengthBytes < 4) continue;
      inLength = false;
      packets++;
      skip = length;
    }
    return -1;
  };
}

/** One session's end of the channel: what the broker reads and writes. */
class ChannelSession extends Duplex {
  /** False once a newer session took the channel (or the channel closed). */
  current = true;
  constructor(
    private readonly onRead: () => void,
    private readonly onWrite: (s: ChannelSession, chunk: Buffer, cb: () => void) => void,
  ) {
    super({ allowHalfOpen: false });
  }
  override _read(): void {
    this.onRead();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.onWrite(this, chunk, cb);
  }
  // Ending a session never ends the channel: whether it closes is decided
  // when the broker's side of the session closes (see admitNext).
  override _final(cb: (err?: Error | null) => void): void {
    cb();
  }
}

/**
 * Split raw into sessions, each handed to admit (the broker's frame guard and
 * aedes). The handle's `closed` resolves when raw closes.
 */
export function splitChannelSessions(
  raw: Duplex,
  admit: (session: Duplex) => Duplex,
  options: ChannelSessionsOptions,
  events: ChannelSessionsEvents,
): AgentChannelHandle {
  const burst = options.restartBurst ?? 4;
  const perS = options.restartsPerS ?? 1;
  const now = options.now ?? Date.now;
  let tokens = burst;
  let refilledAt = now();
  let session: ChannelSession | null = null;
  let walk = createBoundaryWalker();
  let pending: Buffer = Buffer.alloc(0);
  let held = false;
  let waitingDrain: (() => void) | null = null;
  const restartListeners: Array<() => void> = [];

  const closed = new Promise<void>((resolve) => {
    if (raw.destroyed) resolve();
    else raw.once('close', () => resolve());
  });

  function takeRestart(): boolean {
    const t = now();
    tokens = Math.min(burst, tokens + ((t - refilledAt) / 1000) * perS);
    refilledAt = t;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  }

  /**
   * Read again (the session's consumer asked, or the hold ended). No check
   * of the session's buffer here: Node calls _read only when it wants data,
   * and a _read that returns without pushing is not called again, so a
   * "still full" early return wedged the channel for good (a QoS 1 flood
   * stopped after 44 messages). A full session makes the next push return
   * false, which pauses the socket again.
   */
  function resume(): void {
    if (held || raw.destroyed) return;
    raw.resume();
  }

  function write(s: ChannelSession, chunk: Buffer, cb: () => void): void {
    // A superseded session's writes go nowhere (see the header).
    if (!s.current || raw.destroyed) return cb();
    if (raw.write(chunk)) return cb();
    waitingDrain = cb;
  }
  raw.on('drain', () => {
    const cb = waitingDrain;
    waitingDrain = null;
    cb?.();
  });

  // Until a session begins, aedes' CONNECT timeout has nothing to time: the
  // same bound applies here, and the owner re-attaches as before.
  const mute = setTimeout(() => {
    if (!session) raw.destroy();
  }, options.connectTimeoutMs);

  function admitNext(): void {
    clearTimeout(mute);
    const s = new ChannelSession(resume, write);
    session = s;
    walk = createBoundaryWalker();
    const guarded = admit(s);
    // The broker ended this session itself (refused it, or the guest broke a
    // rule): the channel goes too, unless a newer session took over first.
    guarded.once('close', () => {
      if (s.current) raw.destroy();
    });
  }

  function supersede(): void {
    const s = session;
    if (!s) return;
    s.current = false;
    session = null;
    s.push(null);
  }

  function onData(chunk: Buffer): void {
    let rest = chunk;
    while (rest.length > 0 && !raw.destroyed) {
      if (!session) {
        const buf = pending.length > 0 ? Buffer.concat([pending, rest]) : rest;
        const found = findConnect(buf, options.maxConnectSize);
        if ('keepFrom' in found) {
          // Copied: a slice would pin the whole chunk.
          pending = Buffer.from(buf.subarray(found.keepFrom));
          if (found.keepFrom > 0) events.skipped(found.keepFrom);
          return;
        }
        pending = Buffer.alloc(0);
        if (found.at > 0) events.skipped(found.at);
        rest = buf.subarray(found.at);
        admitNext();
      }
      const cut = walk(rest);
      const mine = cut < 0 ? rest : rest.subarray(0, cut);
      if (mine.length > 0 && !session!.push(mine)) raw.pause();
      if (cut < 0) return;
      rest = rest.subarray(cut);
      if (!takeRestart()) {
        events.violation('the agent restarts its MQTT session too often');
        raw.destroy();
        return;
      }
      supersede();
      events.restarted();
      for (const l of restartListeners) l();
    }
  }

  raw.on('data', onData);
  raw.on('error', () => raw.destroy());
  // The peer ended: the session reads its last packets, then ends (a close
  // right after must not cut them off).
  let ended: ChannelSession | null = null;
  raw.on('end', () => {
    ended = session;
    session?.push(null);
  });
  raw.on('close', () => {
    clearTimeout(mute);
    const s = session;
    session = null;
    if (s) {
      s.current = false;
      if (s !== ended) s.destroy();
    }
    const cb = waitingDrain;
    waitingDrain = null;
    cb?.();
  });

  return {
    closed,
    close: () => void raw.destroy(),
    hold(paused) {
      held = paused;
      if (paused) raw.pause();
      else resume();
    },
    onRestart(listener) {
      restartListeners.push(listener);
    },
  };
}
