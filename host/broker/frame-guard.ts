/**
 * A size guard in front of aedes. aedes has no packet size limit of its own and
 * mqtt-packet's parser accumulates a whole packet (up to the 256 MiB the MQTT
 * remaining-length field allows) before any aedes hook can look at it, so a
 * hook-based check would come too late: the memory is already spent. This
 * module therefore reads only the MQTT fixed header (type byte + remaining
 * length varint) as bytes stream past, hand-written because no library exposes
 * "tell me the announced length before you buffer the body", and drops the
 * connection the moment a packet announces more than the cap.
 *
 * It also enforces two cheap protocol facts that aedes would only notice after
 * buffering: the first packet must be CONNECT (and small), and packet types 0
 * and 15 are reserved in MQTT 3.1.1. Outbound, it bounds how many bytes may
 * wait for a slow reader before that reader is dropped.
 */
import { Duplex } from 'node:stream';
import type { AgentBudget } from './agent-budget.js';
import {
  agentHeaderProblem,
  captureLength,
  packetProblem,
  PUBLISH,
  publishTopicEnd,
} from './conformance.js';

export interface FrameLimits {
  /** Largest remaining length accepted for any packet after CONNECT. */
  maxPacketSize: number;
  /** Largest remaining length accepted for the first packet (CONNECT). */
  maxConnectSize: number;
  /** Outbound bytes allowed to queue towards a peer that does not read. */
  maxQueuedBytes: number;
  /** An agent's stream: clean sessions and QoS ≤ 1 only (conformance.ts). */
  agent?: boolean;
}

/** Incremental scanner of MQTT fixed headers; returns a reason on violation. */
export interface FrameScanner {
  feed(chunk: Buffer): string | null;
  readonly packets: number;
  /** Stream offset just past the CONNECT packet, once its length is known. */
  readonly connectEnd: number | null;
  /** With a violation: the CONNACK return code MQTT wants sent before closing. */
  readonly connack: number | null;
}

const HEADER = 0;
const LENGTH = 1;
const BODY = 2;
const CONNECT = 1;

export function createFrameScanner(
  limits: Omit<FrameLimits, 'maxQueuedBytes' | 'budget'>,
): FrameScanner {
  const agent = limits.agent === true;
  let state = HEADER;
  let packets = 0;
  let length = 0;
  let multiplier = 1;
  let lengthBytes = 0;
  let skip = 0;
  let offset = 0; // stream offset of chunk[0]
  let connectEnd: number | null = null;
  let connack: number | null = null;
  // conformance.ts: bodies of CONNECT/SUBSCRIBE/UNSUBSCRIBE and PUBLISH topics.
  let type = 0;
  let bodyLength = 0;
  let cap: Buffer[] | null = null;
  let capLen = 0;
  let want = 0;

  /** Capture up to `want` bytes of chunk[i, i+take); a violation ends the scan. */
  function capture(chunk: Buffer, i: number, take: number): string | null {
    while (cap !== null && take > 0 && capLen < want) {
      const k = Math.min(take, want - capLen);
      cap.push(chunk.subarray(i, i + k));
      capLen += k;
      i += k;
      take -= k;
      if (capLen < want) break;
      const body = cap.length === 1 ? cap[0]! : Buffer.concat(cap);
      if (type === PUBLISH && want === 2 && bodyLength > 2) {
        want = publishTopicEnd(body, bodyLength);
        cap = [body];
        if (want > capLen) continue;
      }
      cap = null;
      const v = packetProblem(type, body, agent);
      if (v !== null) {
        connack = v.connack ?? null;
        return v.reason;
      }
    }
    return null;
  }

  function feed(chunk: Buffer): string | null {
    const problem = scan(chunk);
    offset += chunk.length;
    return problem;
  }

  function scan(chunk: Buffer): string | null {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (state === BODY) {
        // Skip the body (aedes parses it later), capturing what conformance.ts checks.
        const take = Math.min(skip, n - i);
        if (cap !== null) {
          const v = capture(chunk, i, take);
          if (v !== null) return v;
        }
        skip -= take;
        i += take;
        if (skip === 0) state = HEADER;
        continue;
      }
      const b = chunk[i++]!;
      if (state === HEADER) {
        type = b >> 4;
        if (packets === 0 && type !== CONNECT) return 'first packet is not CONNECT';
        // [MQTT-3.1.0-2]. aedes checks this too, but not after a refused
        // CONNECT: the held bytes go through with the CONNACK, and a second
        // CONNECT there got a second authentication and CONNACK (seen in CI).
        if (packets > 0 && type === CONNECT) return 'second CONNECT';
        if (type === 0 || type === 15) return `reserved packet type ${type}`;
        if (agent) {
          const v = agentHeaderProblem(b);
          if (v !== null) return v;
        }
        state = LENGTH;
        length = 0;
        multiplier = 1;
        lengthBytes = 0;
        continue;
      }
      // LENGTH: MQTT's variable byte integer, at most 4 bytes.
      length += (b & 0x7f) * multiplier;
      multiplier *= 128;
      lengthBytes++;
      const limit = packets === 0 ? limits.maxConnectSize : limits.maxPacketSize;
      // Checked on every length byte so a header split across reads is caught
      // as early as the bytes allow.
      if (length > limit) return `packet announces ${length} bytes, limit ${limit}`;
      if (b & 0x80) {
        if (lengthBytes === 4) return 'malformed remaining length';
        continue;
      }
      if (packets === 0) connectEnd = offset + i + length;
      packets++;
      bodyLength = length;
      want = captureLength(type, length);
      cap = want > 0 ? [] : null;
      capLen = 0;
      if (length === 0) {
        const v = captureLength(type, 1) > 0 ? packetProblem(type, Buffer.alloc(0)) : null;
        if (v !== null) return v.reason;
        state = HEADER;
      } else {
        skip = length;
        state = BODY;
      }
    }
    return null;
  }

  return {
    feed,
    get packets() {
      return packets;
    },
    get connectEnd() {
      return connectEnd;
    },
    get connack() {
      return connack;
    },
  };
}

export class FrameLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameLimitError';
  }
}

/**
 * Wrap a byte stream: reads are scanned before aedes sees them; writes pass
 * through, coalesced: mqtt-packet writes header, topic and payload
 * separately, and a burst of deliveries is batched into one syscall.
 */
export class GuardedStream extends Duplex {
  readonly inner: Duplex;
  /** Set by aedes (`conn.client = this`); read for log context only. */
  client?: { id: string | null };
  readonly #scanner: FrameScanner;
  readonly #limits: FrameLimits;
  readonly #onViolation: (reason: string) => void;
  #pendingWrite: ((err?: Error | null) => void) | null = null;
  #ended = false;
  #corked = false;
  /** Bytes read past CONNECT before the broker answered it (see #onData). */
  #held: Buffer[] | null = [];
  #received = 0;
  /** Flow control by the stream's owner (see hold()). */
  #hold = false;
  /** Flow control by the budget: the peer sent more than it may (agent-budget.ts). */
  #throttle: NodeJS.Timeout | null = null;
  #charged = 0;
  /** What the peer may send per second; reading stops while it is in debt (agent-budget.ts). */
  #budget: AgentBudget | null = null;
  /** Chunks read while over budget, delivered when the debt is paid. */
  #delayed: Buffer[] = [];
  #endPushed = false;
  /** Bytes written in this turn of the event loop (not yet offered to the peer). */
  #turnBytes = 0;
  #turnEnds = false;
  readonly #endTurn = (): void => {
    this.#turnBytes = 0;
    this.#turnEnds = false;
  };

  constructor(inner: Duplex, limits: FrameLimits, onViolation: (reason: string) => void) {
    // allowHalfOpen false: when the peer ends, our writable side ends too,
    // which is what a TCP MQTT connection does.
    super({ allowHalfOpen: false });
    this.inner = inner;
    this.#limits = limits;
    this.#scanner = createFrameScanner(limits);
    this.#onViolation = onViolation;
    inner.on('data', (chunk: Buffer) => this.#onData(chunk));
    inner.on('end', () => {
      this.#ended = true;
      this.#endIfDrained();
    });
    inner.on('drain', () => this.#onDrain());
    inner.on('error', (err: Error) => this.destroy(err));
    // A close after 'end' is normal: our readable buffer may still hold the
    // peer's last packets (PUBLISH then DISCONNECT), let aedes read them.
    inner.on('close', () => {
      if (!this.#ended) this.destroy();
    });
  }

  #onData(chunk: Buffer): void {
    const problem = this.#scanner.feed(chunk);
    if (problem !== null) {
      this.inner.pause();
      this.#onViolation(problem);
      const code = this.#scanner.connack;
      // MQTT wants a CONNACK with this code before the close (nothing was
      // sent yet: the violation is in CONNECT).
      if (code !== null && !this.inner.destroyed)
        this.inner.write(Buffer.from([0x20, 0x02, 0x00, code]));
      if (code !== null) this.destroy();
      else this.destroy(new FrameLimitError(problem));
      return;
    }
    const budget = this.#budget;
    if (budget) {
      const wait = budget.charge(this.#scanner.packets - this.#charged, chunk.length);
      this.#charged = this.#scanner.packets;
      // Over budget: this chunk (at most one socket read) waits here until
      // the debt is paid, and nothing more is read meanwhile, so the rest of
      // a flood waits in the peer's pipe, not in mvirtd.
      if (wait > 0 || this.#delayed.length > 0) {
        this.#delayed.push(chunk);
        if (wait > 0) this.#throttleFor(wait);
        return;
      }
    }
    this.#deliver(chunk);
  }

  /** Pass a scanned chunk on to aedes (or hold what follows CONNECT until CONNACK). */
  #deliver(chunk: Buffer): void {
    const start = this.#received;
    this.#received += chunk.length;
    if (this.#held !== null) {
      // Until CONNACK, aedes queues whatever follows CONNECT (up to 42 whole
      // packets) while authentication runs: unauthenticated memory. Pass
      // CONNECT on, keep the rest here and stop reading until the answer.
      const end = this.#scanner.connectEnd;
      const cut = end === null ? chunk.length : Math.max(0, Math.min(chunk.length, end - start));
      if (cut < chunk.length) {
        this.#held.push(chunk.subarray(cut));
        this.inner.pause();
        if (cut === 0) return;
        chunk = chunk.subarray(0, cut);
      }
    }
    if (!this.push(chunk)) this.inner.pause();
  }

  /**
   * Charge what this peer sends from now on to `budget` (an agent's VM,
   * known from the start on a channel, after CONNECT on the guest listener).
   */
  setBudget(budget: AgentBudget): void {
    this.#budget = budget;
    this.#charged = this.#scanner.packets;
  }

  #throttleFor(ms: number): void {
    if (this.#throttle) clearTimeout(this.#throttle);
    this.inner.pause();
    this.#throttle = setTimeout(() => {
      this.#throttle = null;
      if (this.destroyed) return;
      for (const c of this.#delayed.splice(0)) this.#deliver(c);
      this.#endIfDrained();
      this.#resumeIfFree();
    }, ms);
  }

  /** The peer ended: end our readable side once held and delayed bytes went first. */
  #endIfDrained(): void {
    if (!this.#ended || this.#endPushed || this.#delayed.length > 0) return;
    if (this.#held !== null && this.#held.length > 0) return;
    this.#endPushed = true;
    this.push(null);
  }

  /**
   * Read again unless the owner holds, the budget throttles, or bytes wait
   * for CONNACK. Not "unless aedes is full": a _read that returned early is
   * not called again, so waiting for it could wedge the stream; if aedes is
   * full, the next push returns false and pauses the peer again.
   */
  #resumeIfFree(): void {
    if (this.#hold || this.#throttle !== null || this.destroyed) return;
    if (this.#held !== null && this.#held.length > 0) return;
    this.inner.resume();
  }

  /** The broker wrote its first packet (CONNACK): let the held bytes through. */
  #release(): void {
    const held = this.#held;
    this.#held = null;
    if (!held) return;
    for (const b of held) this.push(b);
    if (this.#ended) this.#endIfDrained();
    else this.#resumeIfFree();
  }

  /**
   * Stop (true) or restart (false) reading from the peer, whatever aedes
   * asks for. The job manager holds an agent's channel while the output it
   * already forwarded has not reached the controllers: the guest's writes then
   * block and its agent stops reading job pipes (end-to-end backpressure).
   */
  hold(paused: boolean): void {
    if (this.#hold === paused) return;
    this.#hold = paused;
    if (paused) this.inner.pause();
    else this.#resumeIfFree();
  }

  #onDrain(): void {
    const cb = this.#pendingWrite;
    this.#pendingWrite = null;
    cb?.();
  }

  override _read(): void {
    if (this.#hold || this.#throttle !== null) return;
    if (this.#held === null || this.#held.length === 0) this.inner.resume();
  }

  #forward(bufs: Buffer[], cb: (err?: Error | null) => void): void {
    const inner = this.inner;
    if (inner.destroyed) {
      cb(new Error('connection closed'));
      return;
    }
    if (this.#held !== null) this.#release();
    // aedes writes each delivery in its own setImmediate; corking the socket
    // until the next check phase turns a burst of deliveries into one writev
    // instead of one syscall per message.
    if (!this.#corked) {
      this.#corked = true;
      inner.cork();
      setImmediate(this.#uncork);
    }
    let free = true;
    for (const b of bufs) free = inner.write(b);
    if (free) cb();
    else this.#pendingWrite = cb;
  }

  readonly #uncork = (): void => {
    this.#corked = false;
    if (!this.inner.destroyed) this.inner.uncork();
  };

  /**
   * Each peer has its own bounded queue, and a slow one delays only itself:
   * write() reports success whatever the socket says, so aedes never waits
   * for this peer's 'drain' (it would: one delivery at a time per message,
   * holding mqemitter's shared slots, and one stuck subscriber stalled every
   * delivery in the broker for its 30 s drain timeout — issue 12 measured a
   * bystander's job at 24 s instead of 0.6 s). What the peer has not taken
   * waits here; a peer that still has more than maxQueuedBytes waiting from
   * earlier turns of the event loop when the next message comes is
   * disconnected (the policy). What this turn wrote is not counted (it sits
   * corked until the turn ends, see #forward), so a burst, or one message
   * bigger than the cap (a vm.list of many VMs), still goes to a peer that
   * keeps up. Counted at write time, not in _write: while the peer is not
   * reading, further writes pile up in our own buffer without reaching _write.
   */
  override write(
    chunk: unknown,
    encoding?: BufferEncoding | ((error: Error | null | undefined) => void),
    cb?: (error: Error | null | undefined) => void,
  ): boolean {
    const queued = this.writableLength + this.inner.writableLength - this.#turnBytes;
    this.#turnBytes += Buffer.isBuffer(chunk) ? chunk.length : Buffer.byteLength(String(chunk));
    if (!this.#turnEnds) {
      this.#turnEnds = true;
      setImmediate(this.#endTurn);
    }
    super.write(chunk, encoding as BufferEncoding, cb);
    if (queued > this.#limits.maxQueuedBytes && !this.destroyed) {
      const reason = `peer not reading: ${queued} bytes queued, limit ${this.#limits.maxQueuedBytes}`;
      this.#onViolation(reason);
      this.destroy(new FrameLimitError(reason));
    }
    return true;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#forward([chunk], cb);
  }

  /**
   * What piled up while the peer was not reading goes on as it is, each
   * buffer into the corked socket (one writev), not copied into one: a
   * Buffer.concat of a slow peer's queue (up to maxQueuedBytes) held it
   * twice for a moment.
   */
  override _writev(
    chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>,
    cb: (err?: Error | null) => void,
  ): void {
    this.#forward(
      chunks.map((c) => c.chunk),
      cb,
    );
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.inner.destroyed || this.inner.writableEnded) cb();
    else this.inner.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#throttle) clearTimeout(this.#throttle);
    this.#throttle = null;
    const inner = this.inner;
    if (!err && !inner.destroyed && inner.writableLength > 0) {
      // An orderly close (after a CONNACK refusal, a DISCONNECT, a will at
      // shutdown) must not throw away the last bytes still queued for the
      // peer; give them a moment, but never let a non-reading peer hold on.
      inner.end();
      const t = setTimeout(() => inner.destroy(), 1000);
      t.unref();
      inner.once('close', () => clearTimeout(t));
    } else inner.destroy();
    const pending = this.#pendingWrite;
    this.#pendingWrite = null;
    pending?.(err ?? new Error('connection closed'));
    cb(err);
  }
}

export const guardStream = (
  inner: Duplex,
  limits: FrameLimits,
  onViolation: (reason: string) => void,
): GuardedStream => new GuardedStream(inner, limits, onViolation);
