/**
 * Agent sessions: the one owner of each VM's agent session on the host side.
 * A session exists while the VM's hypervisor process runs (from launch or
 * re-attach to its exit or the daemon's shutdown) and holds the host end of
 * the channel, the hello of the agent now connected, flow control (hold) and
 * the reconnect of a fresh host end after the channel closed.
 *
 * The VM manager opens and ends sessions and hears hello and ready; the job
 * manager calls the agent (exec, signal), holds its channel while output is
 * on the way and hears output, exit and the agent going away. Neither passes
 * the other's traffic on: both listen here.
 *
 * Replay after a reconnect is the listeners' part: every hello (the first and
 * each one after a reconnect) lists the jobs the agent still has, and the job
 * manager asks for what it did not store (see host/jobs/agent-events.ts).
 */
import type { Duplex } from 'node:stream';
import type { AgentChannelHandle, Broker, Sender } from '../broker/types.js';
import {
  AGENT_PROTOCOL_VERSION,
  type AgentDownMessage,
  type Exit,
  type Hello,
  type Log,
  type Output,
  type Telemetry,
} from '../../protocol/agent.js';
import type { PortUp } from '../../protocol/ports.js';
import { MvirtError } from '../../protocol/errors.js';
import type { AgentDownKind, Topics } from '../../protocol/topics.js';
import type { MvirtLogger } from '../log.js';
import type { GuestGate } from '../events/guest-gate.js';
import { createGuestLog, GUEST_LOG_LEVEL, type GuestLog } from './guest-log.js';
import { createAgentLink } from './link.js';

/** Reconnect backoff of a channel's host end: doubles from MIN to MAX while it cannot attach. */
export const RECONNECT_MIN_MS = 100;
export const RECONNECT_MAX_MS = 5000;
/**
 * A session with a hello that ends sooner than this is flapping: the next
 * host end waits MIN doubled per flap, up to FLAPPING_MAX_MS; a longer one
 * resets the wait. A hello alone used to reset it, so a guest that connects,
 * says hello and breaks the protocol (issue 12's QoS 2 flood: refused, the
 * channel closed) got a fresh host end every 100 ms and had mvirtd read and
 * skip ~8 MiB/s of its garbage: RSS +32.9 MiB over the 32 MiB goal in CI
 * (2026-12-07). The cap stays well under the flood's 5 s windows, so a
 * flapping guest is slowed, never shut out.
 */
export const STABLE_SESSION_MS = 10_000;
export const FLAPPING_MAX_MS = 1000;
/** How long an attached agent channel may go without a hello before it is recycled. */
export const AGENT_SESSION_MS = 30_000;

/** What listeners hear from the agents (each after validation, see link.ts). */
export interface AgentListener {
  /** Every hello: the first after boot and each one after a reconnect. */
  hello?(vmId: string, hello: Hello): void;
  /** The agent is ready (only after a hello of the same session). */
  ready?(vmId: string, hello: Hello): void;
  telemetry?(vmId: string, t: Telemetry): void;
  output?(vmId: string, m: Output): void;
  exit?(vmId: string, m: Exit): void;
  /** A port-forward stream message (host/ports/streams.ts). */
  port?(vmId: string, m: PortUp): void;
  /** The channel closed while the VM lives on (the agent may come back). */
  gone?(vmId: string): void;
  /** Jobs started or all ended on the VM (see setBusy). */
  busy?(vmId: string, busy: boolean): void;
}

export interface OpenSession {
  log: MvirtLogger;
  /** The agent dials the guest TCP listener: the host end arrives through guest(). */
  overNetwork: boolean;
  /** Connect a new host end of the channel (the hypervisor's agent socket). */
  connect: () => Promise<Duplex>;
  /** The VM's folder: the agent's log lines go to its agent.log (guest-log.ts). */
  dir?: string;
  /**
   * The guest was resumed from saved state: its agent's MQTT client still
   * believes in the session of the process the state was saved from, and
   * the guest sees no hang-up. The first host end starts with a stale CONNACK
   * so that the client drops that session at once and starts a new one.
   */
  resumed?: boolean;
}

/**
 * A CONNACK out of turn: mqtt.js ends the connection on a duplicate one
 * ("Protocol error: duplicate CONNACK"), as MQTT wants for a protocol
 * violation. Without it a resumed agent sat in its dead session until the
 * broker's CONNECT timeout recycled the channel: 10 s of a 0.5 s resume.
 */
const STALE_SESSION_WAKE = Buffer.from([0x20, 0x02, 0x00, 0x00]);

interface Session extends OpenSession {
  readonly id: string;
  handle?: AgentChannelHandle;
  /** The hello of the agent now connected; undefined while none is. */
  hello?: Hello;
  /** The broker session that said it (see onHello). */
  helloFrom?: Sender;
  /** Flow control asked by the job manager; kept across reconnects. */
  held: boolean;
  reconnectDelayMs: number;
  /** Sessions with a hello in a row that ended before STABLE_SESSION_MS. */
  flaps: number;
  reconnectTimer?: NodeJS.Timeout;
  ended: boolean;
  guestLog?: GuestLog;
}

export interface AgentSessionsDeps {
  bus: Pick<Broker, 'publish' | 'subscribe'>;
  /** broker.attachAgentChannel: the stream's MQTT session, confined to the VM's subtree. */
  attachChannel: (vmId: string, stream: Duplex) => AgentChannelHandle;
  topics: Topics;
  log: MvirtLogger;
  /** Counts guest messages refused outright, written aggregated (host/events/guest-gate.ts). */
  guest?: Pick<GuestGate, 'refuse'>;
}

export type AgentSessions = ReturnType<typeof createAgentSessions>;

export function createAgentSessions(deps: AgentSessionsDeps) {
  const log = deps.log.child({ component: 'agent' });
  const sessions = new Map<string, Session>();
  const listeners: AgentListener[] = [];
  /** Broker sessions an agent started over from, once they had said hello. */
  const ended = new WeakSet<Sender>();

  function emit<K extends keyof AgentListener>(
    kind: K,
    ...args: Parameters<NonNullable<AgentListener[K]>>
  ): void {
    for (const l of listeners) {
      const fn = l[kind] as ((...a: unknown[]) => void) | undefined;
      fn?.(...args);
    }
  }

  const link = createAgentLink({
    bus: deps.bus,
    topics: deps.topics,
    log,
    isKnown: (id) => sessions.has(id),
    refused: (id, what) => deps.guest?.refuse(id, what),
    handlers: {
      hello: onHello,
      ready: onReady,
      telemetry: (id, t) => emit('telemetry', id, t),
      log: onLog,
      output: (id, m) => emit('output', id, m),
      exit: (id, m) => emit('exit', id, m),
      port: (id, m) => emit('port', id, m),
    },
  });

  /**
   * A guest's log line (made inert by the link): into the VM's own bounded
   * agent.log, rate-limited (dropped lines counted); without a VM folder, into
   * mvirtd's log at most at info.
   */
  function onLog(id: string, m: Log): void {
    const s = sessions.get(id);
    if (!s) return;
    if (s.dir === undefined) {
      s.log[GUEST_LOG_LEVEL[m.level]]({ guest: true, guestLevel: m.level }, m.message);
      return;
    }
    s.guestLog ??= createGuestLog(s.dir);
    if (!s.guestLog.write(m)) deps.guest?.refuse(id, 'log lines dropped (rate limit)');
  }

  function onHello(id: string, hello: Hello, from?: Sender): void {
    const s = sessions.get(id);
    if (!s) return;
    // A hello still on its way through the broker when its channel closed
    // (a session the broker ended right after it, for a refused publish):
    // that session is over, and kept, it made the next session's hello look
    // like a second one, so the agent that came back was never heard.
    if (!s.handle) {
      deps.guest?.refuse(id, 'hellos of a closed channel dropped');
      return;
    }
    // Likewise a late hello of a session the agent started over since.
    if (from && ended.has(from)) {
      deps.guest?.refuse(id, 'hellos of an ended session dropped');
      return;
    }
    // One hello per MQTT session: the agent says it once after it connects.
    // Another from the same session is refused (counted, never an event
    // each: issue 12 saw 236,000 hellos in 60 s). A session is the broker's
    // client connection, which `from` stands for.
    if (s.hello && from === s.helloFrom) {
      deps.guest?.refuse(id, 'hellos refused (one per session)');
      return;
    }
    s.hello = hello;
    s.helloFrom = from;
    if (hello.protocol !== AGENT_PROTOCOL_VERSION) {
      s.log.warn(
        { agentProtocol: hello.protocol, hostProtocol: AGENT_PROTOCOL_VERSION },
        'agent speaks another protocol version',
      );
    }
    emit('hello', id, hello);
  }

  function onReady(id: string): void {
    const s = sessions.get(id);
    if (!s) return;
    if (!s.hello) {
      s.log.warn('agent said ready before hello; dropped');
      return;
    }
    emit('ready', id, s.hello);
  }

  async function connect(s: Session): Promise<void> {
    // Over the network the guest dials; its session arrives through guest().
    if (s.overNetwork || s.ended) return;
    const stream = await s.connect();
    if (s.ended) {
      stream.destroy();
      return;
    }
    if (s.resumed) {
      s.resumed = false;
      stream.write(STALE_SESSION_WAKE);
    }
    adopt(s, deps.attachChannel(s.id, stream));
  }

  /** Wire a session's host end (channel or guest TCP) to the VM. */
  function adopt(s: Session, handle: AgentChannelHandle): void {
    const previous = s.handle;
    s.handle = handle;
    previous?.close();
    if (s.held) handle.hold(true);
    s.log.debug('agent channel attached');
    // The agent began a new MQTT session on the same channel: as after a
    // reconnect, its old session's hello and pending calls no longer hold.
    handle.onRestart?.(() => {
      if (s.handle !== handle) return;
      if (s.helloFrom) ended.add(s.helloFrom);
      s.hello = undefined;
      link.dropVm(s.id, 'the agent started a new session');
      if (!s.ended) emit('gone', s.id);
    });
    // A channel that carries no agent hello for a while is recycled. After a
    // guest reset, bytes of the old agent's session can still sit in QEMU's
    // virtio-serial queue and wedge the new session on this stream (seen under
    // TCG when a reboot followed a resume within milliseconds); a fresh host end
    // lets the agent's own reconnect through. A silent stream is already
    // closed by the broker's CONNECT timeout, so this only ends stuck sessions.
    const watchdog = setTimeout(() => {
      if (s.handle === handle && !s.hello && !s.overNetwork) {
        s.log.warn('agent channel without a hello; recycling it');
        handle.close();
      }
    }, AGENT_SESSION_MS);
    const attachedAt = Date.now();
    void handle.closed.then(() => {
      clearTimeout(watchdog);
      if (s.handle !== handle) return;
      if (s.hello) {
        s.flaps = Date.now() - attachedAt >= STABLE_SESSION_MS ? 0 : s.flaps + 1;
        s.reconnectDelayMs = Math.min(RECONNECT_MIN_MS * 2 ** s.flaps, FLAPPING_MAX_MS);
      }
      s.handle = undefined;
      s.hello = undefined;
      link.dropVm(s.id, 'the agent channel closed');
      if (s.ended) return;
      emit('gone', s.id);
      if (s.overNetwork) {
        s.log.info('agent session over the network closed; the agent redials');
        return;
      }
      // The guest side reconnects by itself; we only need a fresh host end.
      s.log.info('agent channel closed; reconnecting');
      scheduleReconnect(s);
    });
  }

  function scheduleReconnect(s: Session): void {
    if (s.reconnectTimer || s.ended) return;
    const delay = s.reconnectDelayMs;
    s.reconnectDelayMs = Math.min(delay * 2, RECONNECT_MAX_MS);
    s.reconnectTimer = setTimeout(() => {
      s.reconnectTimer = undefined;
      connect(s).catch((err: unknown) => {
        s.log.debug({ err: String(err) }, 'agent channel reconnect failed');
        scheduleReconnect(s);
      });
    }, delay);
  }

  return {
    /** Start listening to what agents send. */
    start: () => link.start(),

    /** Hear agent events; returns the unsubscribe function. Listeners run in the order added. */
    listen(l: AgentListener): () => void {
      listeners.push(l);
      return () => {
        const i = listeners.indexOf(l);
        if (i >= 0) listeners.splice(i, 1);
      };
    },

    /** A VM's hypervisor process runs (launched or re-attached): its agent may speak now. */
    open(vmId: string, o: OpenSession): void {
      const old = sessions.get(vmId);
      if (old) end(old);
      sessions.set(vmId, {
        ...o,
        id: vmId,
        held: false,
        reconnectDelayMs: RECONNECT_MIN_MS,
        flaps: 0,
        ended: false,
      });
    },

    /** Connect the channel's host end now (boot); rejects when it cannot. */
    async connect(vmId: string): Promise<void> {
      const s = sessions.get(vmId);
      if (s) await connect(s);
    },

    /** Connect the host end with backoff until it works (recovery). */
    connectSoon(vmId: string): void {
      const s = sessions.get(vmId);
      if (!s) return;
      connect(s).catch((err: unknown) => {
        s.log.warn({ err: String(err) }, 'agent channel not re-attached yet; retrying');
        scheduleReconnect(s);
      });
    },

    /** The guest is resetting: its agent's hello no longer holds (nothing is said until the next). */
    forgetHello(vmId: string): void {
      const s = sessions.get(vmId);
      if (s) s.hello = undefined;
    },

    /** The guest was reset: its new agent starts a fresh MQTT session on a fresh host end. */
    renew(vmId: string): void {
      const s = sessions.get(vmId);
      if (!s) return;
      if (s.handle) s.handle.close();
      else if (!s.overNetwork) scheduleReconnect(s);
    },

    /** An agent authenticated on the guest TCP listener (its token named this VM). */
    guest(vmId: string, handle: AgentChannelHandle): void {
      const s = sessions.get(vmId);
      if (!s?.overNetwork || s.ended) {
        log.warn({ vmId }, 'guest TCP agent for a VM that does not expect one; closed');
        handle.close();
        return;
      }
      s.log.debug('agent session over the network');
      adopt(s, handle);
    },

    /**
     * The VM's process is gone (`reason` given: pending calls fail with it)
     * or the daemon leaves it running: end the session.
     */
    end(vmId: string, reason?: string): void {
      const s = sessions.get(vmId);
      if (!s) return;
      end(s);
      if (reason !== undefined) link.dropVm(vmId, reason);
    },

    /** The hello of the VM's current agent session, if one is connected. */
    hello: (vmId: string): Hello | undefined => sessions.get(vmId)?.hello,

    /** An agent said hello on a channel that is still attached. */
    connected(vmId: string): boolean {
      const s = sessions.get(vmId);
      return s?.hello !== undefined && s.handle !== undefined;
    },

    /** A request to the agent; AGENT_UNAVAILABLE while no agent is connected. */
    call<K extends AgentDownKind>(
      vmId: string,
      kind: K,
      body: Omit<AgentDownMessage[K], 'id'>,
      timeoutMs: number,
    ): Promise<unknown> {
      if (!sessions.get(vmId)?.hello)
        return Promise.reject(
          new MvirtError('AGENT_UNAVAILABLE', `VM ${vmId} has no agent connected`),
        );
      return link.call(vmId, kind, body, timeoutMs);
    },

    /** Flow control: stop (true) or restart reading what the VM's agent sends. */
    hold(vmId: string, paused: boolean): void {
      const s = sessions.get(vmId);
      if (!s) return;
      s.held = paused;
      s.handle?.hold(paused);
    },

    /** Jobs run on the VM (true) or none does any more (false): listeners move it ready ⇄ busy. */
    setBusy(vmId: string, busy: boolean): void {
      emit('busy', vmId, busy);
    },

    /** Daemon shutdown: end every session, fail pending calls, stop listening. */
    async close(): Promise<void> {
      for (const s of sessions.values()) end(s);
      await link.close();
    },
  };

  function end(s: Session): void {
    s.ended = true;
    if (sessions.get(s.id) === s) sessions.delete(s.id);
    if (s.reconnectTimer) clearTimeout(s.reconnectTimer);
    s.reconnectTimer = undefined;
    s.handle?.close();
  }
}
