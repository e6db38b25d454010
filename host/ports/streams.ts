/**
 * The host end of port-forward streams (protocol/ports.ts): each accepted TCP
 * connection becomes a stream to a port on the guest's loopback, carried over
 * the VM's agent channel with credit both ways (protocol/port-flow.ts).
 *
 * Only mvirtd opens streams and names them. What a guest sends is checked
 * against the streams it was given: data or credit beyond the window, out of
 * any order the window allows, or for a stream it was never given is refused
 * (counted, written aggregated by the guest gate) and, on an open stream,
 * aborts that stream alone. A guest that stops reading holds back the streams
 * it does not read and nothing else: mvirtd keeps at most one window per
 * stream and direction, and at most `maxStreams` streams per VM.
 */
import type { Socket } from 'node:net';
import {
  createInbound,
  createOutbound,
  type Inbound,
  type Outbound,
} from '../../protocol/port-flow.js';
import {
  PORT_MAX_STREAMS,
  PORT_WINDOW_BYTES,
  type PortCloseCode,
  type PortDown,
  type PortUp,
} from '../../protocol/ports.js';
import { AGENT_DOWN } from '../../protocol/agent.js';
import { encodeCbor } from '../../protocol/codec.js';
import { MvirtError } from '../../protocol/errors.js';
import type { Topics } from '../../protocol/topics.js';
import type { AgentSessions } from '../agent/sessions.js';
import type { Bus } from '../broker/types.js';
import type { MvirtLogger } from '../log.js';

export interface PortStreamOptions {
  /** Credit per stream and direction. */
  window: number;
  maxStreams: number;
  /** How long the guest may take to connect to its port. */
  openTimeoutMs: number;
}

export const DEFAULT_PORT_STREAM_OPTIONS: PortStreamOptions = {
  window: PORT_WINDOW_BYTES,
  maxStreams: PORT_MAX_STREAMS,
  // The agent gives up connecting after 60 s (a full accept backlog retries SYNs for that long).
  openTimeoutMs: 70_000,
};

/** How a stream ended: bytes each way, and why when it was not an orderly end of both sides. */
export interface StreamEnd {
  bytesToGuest: number;
  bytesFromGuest: number;
  error?: string;
}

interface Stream {
  id: number;
  vmId: string;
  sock: Socket;
  inbound: Inbound;
  outbound: Outbound;
  sawClientEnd: boolean;
  guestEnded: boolean;
  clientEndSent: boolean;
  done: boolean;
  toGuest: number;
  fromGuest: number;
  onEnd: (e: StreamEnd) => void;
}

interface VmStreams {
  open: Map<number, Stream>;
  /** The highest stream id ever given to this VM: a guest naming a higher one made it up. */
  maxGiven: number;
}

export type PortStreams = ReturnType<typeof createPortStreams>;

/** What carries a stream message to a VM's agent (not a request: no reply). */
export type PortSend = (vmId: string, m: Exclude<PortDown, { op: 'open' }>) => Promise<void>;

/**
 * Stream messages straight onto the broker, not through mvirtd's ordered bus:
 * that bus publishes one message at a time, each once written to its
 * subscriber, so a guest slow to read its channel held back every reply and
 * state mvirtd published (seen under TCG: a port.list reply waited 10 s
 * behind 20 downloads). Streams need no order across messages: each data
 * chunk and end carries its sequence number, credit adds up in any order.
 */
export function directPortSend(
  bus: Pick<Bus, 'publish'>,
  topics: Pick<Topics, 'agentDown'>,
  connected: (vmId: string) => boolean,
): PortSend {
  return async (vmId, m) => {
    if (!connected(vmId))
      throw new MvirtError('AGENT_UNAVAILABLE', `VM ${vmId} has no agent connected`);
    // Our own output is checked too: a host bug should fail here, not in the guest.
    const r = AGENT_DOWN.port.safeParse(m);
    if (!r.success) throw new MvirtError('INTERNAL', `bad port message ${m.op}`);
    await bus.publish(topics.agentDown(vmId, 'port'), encodeCbor(m), { qos: 1 });
  };
}

export function createPortStreams(deps: {
  agents: Pick<AgentSessions, 'call' | 'listen'>;
  send: PortSend;
  log: MvirtLogger;
  /** A guest message refused (host/events/guest-gate.ts counts and writes them aggregated). */
  refused?: (vmId: string, what: string) => void;
  options?: Partial<PortStreamOptions>;
}) {
  const o = { ...DEFAULT_PORT_STREAM_OPTIONS, ...deps.options };
  const log = deps.log.child({ component: 'ports' });
  const vms = new Map<string, VmStreams>();
  let nextId = 1;

  const send = (s: Stream, m: Exclude<PortDown, { op: 'open' }>) => {
    deps.send(s.vmId, m).catch((err: unknown) => {
      if (!s.done) finish(s, `the agent channel: ${(err as Error).message}`);
    });
  };

  /** The stream is over here (an orderly end when `error` is absent). */
  function finish(s: Stream, error?: string, tell?: PortCloseCode): void {
    if (s.done) return;
    s.done = true;
    const v = vms.get(s.vmId);
    v?.open.delete(s.id);
    if (tell) send(s, { op: 'close', stream: s.id, code: tell });
    if (error !== undefined) s.sock.destroy();
    s.onEnd({
      bytesToGuest: s.toGuest,
      bytesFromGuest: s.fromGuest,
      ...(error !== undefined ? { error } : {}),
    });
  }

  function maybeDone(s: Stream): void {
    if (s.guestEnded && s.clientEndSent) finish(s);
  }

  function wire(s: Stream): void {
    const { sock } = s;
    sock.on('data', (b: Buffer) => {
      s.toGuest += b.length;
      s.outbound.push(b);
    });
    sock.on('end', () => {
      s.sawClientEnd = true;
      s.outbound.finish();
    });
    sock.on('close', () => {
      // Closed after both FINs: our end goes out once what it sent has had
      // credit. Closed otherwise (a reset, a write that failed): abort.
      if (!s.sawClientEnd || !s.guestEnded) finish(s, 'the client reset the connection', 'reset');
    });
    sock.resume();
  }

  function onGuest(vmId: string, m: PortUp): void {
    const v = vms.get(vmId);
    const s = v?.open.get(m.stream);
    if (!s) {
      // Late messages of a stream that ended are harmless; one it never had is not.
      if (!v || m.stream > v.maxGiven)
        deps.refused?.(vmId, 'port messages for streams never opened refused');
      return;
    }
    if (m.op === 'close') return finish(s, `the guest closed the stream (${m.code ?? 'reset'})`);
    let verdict;
    if (m.op === 'data') {
      verdict = s.inbound.data(m.seq, m.data);
      if (verdict === 'ok') s.fromGuest += m.data.length;
    } else if (m.op === 'end') verdict = s.inbound.end(m.seq);
    else verdict = s.outbound.grant(m.bytes);
    if (verdict === 'violation') {
      log.debug(
        { vmId, stream: m.stream, op: m.op },
        'port message beyond flow control; stream aborted',
      );
      deps.refused?.(vmId, 'port messages breaking flow control refused');
      finish(s, 'the guest broke flow control', 'protocol');
    }
  }

  function closeVm(vmId: string, why: string): void {
    const v = vms.get(vmId);
    if (!v) return;
    for (const s of [...v.open.values()]) finish(s, why);
  }

  deps.agents.listen({
    port: onGuest,
    gone: (vmId) => closeVm(vmId, 'the agent channel closed'),
  });

  return {
    /**
     * Carry `sock` (paused, allowHalfOpen) to 127.0.0.1:guestPort in the VM.
     * `onEnd` is called once, when the stream is over either way.
     */
    open(vmId: string, guestPort: number, sock: Socket, onEnd: (e: StreamEnd) => void): void {
      let v = vms.get(vmId);
      if (!v) vms.set(vmId, (v = { open: new Map(), maxGiven: 0 }));
      if (v.open.size >= o.maxStreams) {
        sock.destroy();
        onEnd({
          bytesToGuest: 0,
          bytesFromGuest: 0,
          error: `${o.maxStreams} streams are open to this VM`,
        });
        return;
      }
      const id = nextId++;
      v.maxGiven = id;
      const s: Stream = {
        id,
        vmId,
        sock,
        sawClientEnd: false,
        guestEnded: false,
        clientEndSent: false,
        done: false,
        toGuest: 0,
        fromGuest: 0,
        onEnd,
        inbound: createInbound(o.window, {
          write: (data) => {
            if (sock.destroyed) return s.inbound.consumed(data.length);
            sock.write(data, () => s.inbound.consumed(data.length));
          },
          end: () => {
            s.guestEnded = true;
            if (!sock.destroyed) sock.end();
            maybeDone(s);
          },
          grant: (bytes) => send(s, { op: 'credit', stream: id, bytes }),
        }),
        outbound: createOutbound(o.window, {
          data: (seq, data) => send(s, { op: 'data', stream: id, seq, data }),
          end: (seq) => {
            s.clientEndSent = true;
            send(s, { op: 'end', stream: id, seq });
            maybeDone(s);
          },
          pause: () => sock.pause(),
          resume: () => sock.resume(),
        }),
      };
      v.open.set(id, s);
      sock.pause();
      // A client that goes before the guest has connected: no data is lost, none was carried.
      sock.on('error', () => undefined);
      const early = () => finish(s, 'the client left before the guest connected', 'reset');
      sock.once('close', early);
      deps.agents
        .call(
          vmId,
          'port',
          // Omit<> of a union is not distributive: this is the `open` member without its id.
          { op: 'open', stream: id, port: guestPort, window: o.window } as Omit<PortDown, 'id'>,
          o.openTimeoutMs,
        )
        .then(
          () => {
            sock.off('close', early);
            if (s.done) return;
            wire(s);
          },
          (err: unknown) => {
            sock.off('close', early);
            const e = err instanceof MvirtError ? err : null;
            const code = (e?.details as { code?: string } | undefined)?.code;
            finish(
              s,
              code === 'PORT_REFUSED' || code === 'PORT_LIMIT'
                ? (e?.message ?? 'refused')
                : `the guest did not open the stream: ${(err as Error).message}`,
              // A timed-out open may still connect later: tell the guest to drop it.
              e?.code === 'TIMEOUT' ? 'reset' : undefined,
            );
          },
        );
    },
    closeVm,
    /** Streams open to a VM now. */
    count: (vmId: string): number => vms.get(vmId)?.open.size ?? 0,
    options: o,
  };
}
