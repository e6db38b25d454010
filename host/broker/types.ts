/**
 * The controller-facing bus as the rest of the daemon sees it. The embedded
 * aedes broker implements it today; an uplink to an external broker cluster
 * could implement it tomorrow without the VM or job managers noticing.
 */
import type { Duplex } from 'node:stream';
import type { Actor } from '../auth/actor.js';
import type { Access } from '../auth/roles.js';
import type { BrokerStats } from './stats.js';

export type { BrokerStats };

export interface PublishOpts {
  retain?: boolean;
  qos?: 0 | 1;
}

/**
 * Who published a message the daemon receives (the API's caller). One object
 * per client connection, so a handler can tell an agent's sessions apart.
 */
export interface Sender {
  actor: Actor;
  access: Access;
  /** Why a reply to this topic would not be private to the sender; null when it may go there. */
  replyRefusal(topic: string): string | null;
}

/**
 * `sender` is known for every message a client published through the broker
 * and for the daemon's own publishes; the handler runs as that actor
 * (host/auth/actor.ts), so what it appends to the event log names it.
 */
export type MessageHandler = (topic: string, payload: Buffer, sender?: Sender) => void;

export interface Bus {
  publish(topic: string, payload: Buffer | string, opts?: PublishOpts): Promise<void>;
  /** Subscribe the daemon itself; returns an unsubscribe function. */
  subscribe(filter: string, handler: MessageHandler): Promise<() => Promise<void>>;
}

/**
 * The daemon's last will. With an uplink it is a real MQTT will (retained,
 * sent in CONNECT). The embedded broker dies with the daemon, so a crash can
 * publish nothing: controllers see their connection drop, and retained state
 * (in memory) is gone until the restarted daemon republishes it. The embedded
 * broker publishes the will in close(), i.e. on any orderly shutdown, just
 * before clients are disconnected.
 */
export interface LastWill {
  topic: string;
  payload: Buffer | string;
  /** Default true: status topics are retained. */
  retain?: boolean;
}

export interface AgentChannelHandle {
  /** Resolves when the stream closes (for a guest TCP connection: its one session ends). */
  readonly closed: Promise<void>;
  close(): void;
  /** Stop or restart reading what the agent sends (flow control). */
  hold(paused: boolean): void;
  /**
   * A channel (not a guest TCP connection) can carry successive sessions: the
   * listener hears that the agent began a new one on the same stream, so what
   * the old session said (its hello) no longer holds (see channel-sessions.ts).
   */
  onRestart?(listener: () => void): void;
}

export interface Broker extends Bus {
  /** Hand a per-VM agent byte stream to the broker; the client is confined to that VM's subtree. */
  attachAgentChannel(vmId: string, stream: Duplex): AgentChannelHandle;
  /**
   * A WebSocket connection another listener accepted (the HTTP listener's
   * `/mqtt`): a controller connection exactly like one on `ws`, with the same
   * authentication and ACL.
   */
  attachWebSocket(stream: Duplex, remoteAddress: string | undefined): void;
  /** The WebSocket message size cap (ws maxPayload) for such connections. */
  readonly wsMaxPayload: number;
  /**
   * Addresses actually bound (ports resolved), for logs and tests:
   * tcp/guest `host:port`, unix a path, ws `ws://host:port/path`.
   */
  readonly addresses: { tcp?: string; unix?: string; ws?: string; guest?: string };
  /**
   * Called when an agent authenticates on the guest TCP listener, with a
   * handle like attachAgentChannel's (the guest dials; the host cannot).
   */
  onGuestAgent(listener: (vmId: string, handle: AgentChannelHandle) => void): void;
  /** Called with the client id of each client that disconnects (what lives with a controller's connection ends). */
  onClientGone(listener: (clientId: string) => void): void;
  /**
   * Whether a connected client subscribes to `topic` now: work whose only
   * purpose is to be delivered (a VM's console output) is skipped otherwise.
   */
  hasSubscriber(topic: string): boolean;
  /** Number of connected clients (controllers and agents). */
  clientCount(): number;
  /** Message counters and per-second rates for host status. */
  stats(): BrokerStats;
  /** Register (or clear with null) the daemon's last will; see LastWill. */
  setLastWill(will: LastWill | null): void;
  /** Publish the last will, disconnect every client, stop listening, remove the unix socket. */
  close(): Promise<void>;
}
