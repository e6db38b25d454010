/**
 * The guest end of port forwarding (protocol/ports.ts): each stream the host
 * opens becomes a TCP connection to 127.0.0.1:port here, carried both ways
 * with credit (protocol/port-flow.ts). The agent never opens a stream: it
 * only answers those the host opened. Streams end with the agent's session
 * (the host closes its side of them when the channel goes).
 */
import type { Duplex } from 'node:stream';
import {
  createInbound,
  createOutbound,
  type Inbound,
  type Outbound,
} from '../protocol/port-flow.js';
import {
  PORT_MAX_STREAMS,
  type PortCloseCode,
  type PortDown,
  type PortUp,
} from '../protocol/ports.js';
import { AgentError } from './errors.js';
import type { Platform } from './platform/types.js';

export interface PortSinks {
  send(msg: PortUp): void;
  log(level: 'debug' | 'info' | 'warn', message: string): void;
}

interface Stream {
  id: number;
  sock: Duplex | null;
  inbound: Inbound;
  outbound: Outbound;
  /** The host's side has ended (its FIN is written), and ours. */
  hostEnded: boolean;
  ourEnded: boolean;
  closed: boolean;
}

export interface Ports {
  handle(m: PortDown): Promise<unknown> | undefined;
  /** Close every stream (the session ended): nothing more is sent for them. */
  closeAll(): void;
  readonly open: number;
}

export function createPorts(
  platform: Pick<Platform, 'connectLoopback'>,
  sinks: PortSinks,
  maxStreams = PORT_MAX_STREAMS,
): Ports {
  const streams = new Map<number, Stream>();

  /** Abort a stream (a `close` is an abort: both ends drop what they hold). */
  function close(s: Stream, code?: PortCloseCode, tell = true): void {
    if (s.closed) return;
    s.closed = true;
    streams.delete(s.id);
    s.sock?.destroy();
    if (tell) sinks.send({ op: 'close', stream: s.id, ...(code ? { code } : {}) });
  }

  /** Both directions ended in order: the stream is over on both sides without a word. */
  function maybeDone(s: Stream): void {
    if (!s.hostEnded || !s.ourEnded || s.closed) return;
    s.closed = true;
    streams.delete(s.id);
  }

  function wire(s: Stream, sock: Duplex): void {
    s.sock = sock;
    let sawEnd = false;
    sock.on('data', (b: Buffer) => s.outbound.push(b));
    sock.on('end', () => {
      sawEnd = true;
      s.outbound.finish();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      // Closed after both FINs, our end goes out once what it sent has had
      // credit. Closed otherwise (a reset, a write that failed): abort.
      if (!sawEnd || !s.hostEnded) close(s, 'reset');
    });
  }

  function open(m: Extract<PortDown, { op: 'open' }>): Promise<unknown> {
    if (streams.has(m.stream))
      throw new AgentError('BAD_MESSAGE', `port stream ${m.stream} is already open`);
    if (streams.size >= maxStreams)
      throw new AgentError('PORT_LIMIT', `${maxStreams} port streams are open in this guest`);
    const connect = platform.connectLoopback;
    if (!connect) throw new AgentError('PORT_REFUSED', 'this agent cannot open TCP connections');
    const s: Stream = {
      id: m.stream,
      sock: null,
      hostEnded: false,
      ourEnded: false,
      closed: false,
      inbound: createInbound(m.window, {
        // A socket closed meanwhile calls back with an error: the credit still goes back.
        write: (data) => {
          if (!s.sock || s.sock.destroyed) return s.inbound.consumed(data.length);
          s.sock.write(data, () => s.inbound.consumed(data.length));
        },
        end: () => {
          s.hostEnded = true;
          if (s.sock && !s.sock.destroyed) s.sock.end();
          maybeDone(s);
        },
        grant: (bytes) => sinks.send({ op: 'credit', stream: s.id, bytes }),
      }),
      outbound: createOutbound(m.window, {
        data: (seq, data) => sinks.send({ op: 'data', stream: s.id, seq, data }),
        end: (seq) => {
          s.ourEnded = true;
          sinks.send({ op: 'end', stream: s.id, seq });
          maybeDone(s);
        },
        pause: () => s.sock?.pause(),
        resume: () => s.sock?.resume(),
      }),
    };
    streams.set(s.id, s);
    return connect(m.port).then(
      (sock) => {
        // The host gave up on it meanwhile (its close came before we connected).
        if (s.closed) {
          sock.destroy();
          throw new AgentError('PORT_REFUSED', `port stream ${s.id} was closed while connecting`);
        }
        wire(s, sock);
        return {};
      },
      (err: Error & { code?: string }) => {
        close(s, undefined, false);
        throw new AgentError(
          'PORT_REFUSED',
          `127.0.0.1:${m.port} in the guest: ${err.code ?? err.message}`,
        );
      },
    );
  }

  /** A message for a stream of ours; a protocol slip by the host closes that stream only. */
  function onStream(m: Exclude<PortDown, { op: 'open' }>): void {
    const s = streams.get(m.stream);
    if (!s) return; // closed here already: the host learns it from our close
    if (m.op === 'close') return close(s, undefined, false);
    let verdict;
    if (m.op === 'data') verdict = s.inbound.data(m.seq, m.data);
    else if (m.op === 'end') verdict = s.inbound.end(m.seq);
    else verdict = s.outbound.grant(m.bytes);
    if (verdict === 'violation') {
      sinks.log('warn', `port stream ${s.id}: the host broke flow control (${m.op}); closed`);
      close(s, 'protocol');
    }
  }

  return {
    handle(m) {
      if (m.op === 'open') return open(m);
      onStream(m);
      return undefined;
    },
    closeAll() {
      for (const s of [...streams.values()]) close(s, undefined, false);
    },
    get open() {
      return streams.size;
    },
  };
}
