/** createBroker options, their defaults, and `host:port` parsing. */
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { ObjectKind } from '../auth/roles.js';
import { DEFAULT_AGENT_BUDGET, type AgentBudgetLimits } from './agent-budget.js';
import { DEFAULT_LOGIN_LIMITS, type LoginLimitOptions } from './login-limit.js';
import { DEFAULT_RETAINED_LIMITS, type RetainedLimits } from './quotas.js';
import { DEFAULT_QUEUE_LIMITS, type QueueLimits } from './queue-quota.js';
import type { Gate } from './listeners.js';
import type { TlsContext } from './tls.js';
import type { UserEntry } from './users.js';

export interface BrokerOptions {
  /** Topic root `<prefix>/<hostId>` (protocol/topics.ts hostRoot). */
  root: string;
  /** Controller TCP listener `host:port` (port 0 = any); default `127.0.0.1:1883`; false = none. */
  listen?: string | false;
  /** Data folder; the unix socket defaults to `<dataDir>/mvirt.sock`. */
  dataDir?: string;
  /** Unix socket path (mode 0660); default from dataDir; false = none. */
  unixPath?: string | false;
  /** MQTT over WebSocket `host:port`; off unless given. */
  ws?: string | false;
  /** WebSocket path; default `/mqtt` (MQTT.js's browser default). */
  wsPath?: string;
  /** Agent TCP listener (bridge address) `host:port`; off unless given. */
  guestListen?: string | false;
  /** Checks an agent's VM id + token on the guest listener (constant-time compare is its job). */
  verifyAgentToken?: (vmId: string, token: string) => boolean;
  /**
   * Short-lived controller passwords minted elsewhere (the dashboard's session
   * tokens): accepted for that user over WebSocket only, besides the user's
   * own password.
   */
  verifyControllerToken?: (username: string, token: string) => boolean;
  /**
   * Anonymous controllers, only over the unix socket (whose owner, group and
   * mode decide who may connect). TCP and WebSocket controllers always log
   * in: loopback is not an identity. Default false.
   */
  allowAnonymous?: boolean;
  /** TLS on the controller TCP and WebSocket listeners (not the guest listener, whose token is per VM). */
  tls?: TlsContext | null;
  /** Controller TCP/WebSocket connections to turn away before CONNECT (peers on a guest network). */
  gate?: Gate;
  /** Controller users (password hashes); merged with usersFile. */
  users?: UserEntry[];
  /** JSON file `{ "users": [{ "username", "passwordHash" }] }`. */
  usersFile?: string;
  /** Largest packet (remaining length) a controller may send; default 1 MiB. */
  maxPacketSize?: number;
  /** Largest packet an agent may send; default 1 MiB. */
  agentMaxPacketSize?: number;
  /** Largest CONNECT packet; default 64 KiB. */
  maxConnectSize?: number;
  /**
   * Outbound bytes queued for a client that does not keep up before it is
   * dropped (the broker never waits for one client: frame-guard.ts); default 8 MiB.
   */
  maxQueuedBytes?: number;
  /** Close connections that send no complete CONNECT within this; default 10 s. */
  connectTimeoutMs?: number;
  /** Refuse keepalives above this many seconds (0 = no limit); default 0. */
  keepaliveLimitS?: number;
  /** Per listener; default 1024. */
  maxConnections?: number;
  /** Owner label of a VM, job or pool, for scoped controllers (host/store/owners.ts). */
  ownerOf?: (kind: ObjectKind, id: string) => string | null;
  /** Retained messages each controller may keep; default 128 MiB in 10,000 topics. */
  retainedLimits?: RetainedLimits;
  /** Failed logins per source and user; default 20 at once, then one per 2 s. */
  loginLimits?: LoginLimitOptions;
  /** Messages queued per controller (persistent sessions, unacknowledged QoS 1); default 10,000 / 16 MiB. */
  queueLimits?: QueueLimits;
  /** What each VM's agent may send per second (agent-budget.ts); default 1,000 packets, 32 MiB. */
  agentBudget?: Partial<AgentBudgetLimits>;
}

export interface ResolvedOptions {
  root: string;
  listen: HostPort | null;
  unixPath: string | null;
  ws: HostPort | null;
  wsPath: string;
  guestListen: HostPort | null;
  verifyAgentToken: ((vmId: string, token: string) => boolean) | null;
  verifyControllerToken: ((username: string, token: string) => boolean) | null;
  allowAnonymous: boolean;
  tls: TlsContext | null;
  gate: Gate | undefined;
  maxPacketSize: number;
  agentMaxPacketSize: number;
  maxConnectSize: number;
  maxQueuedBytes: number;
  connectTimeoutMs: number;
  keepaliveLimitS: number;
  maxConnections: number;
  retainedLimits: RetainedLimits;
  loginLimits: LoginLimitOptions;
  queueLimits: QueueLimits;
  agentBudget: AgentBudgetLimits;
}

export interface HostPort {
  host: string;
  port: number;
}

export const DEFAULT_LISTEN = '127.0.0.1:1883';
const MiB = 1024 * 1024;

/** `127.0.0.1:1883`, `[::1]:1883`, `localhost:0`. */
export function parseHostPort(s: string, what: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new MvirtError('CONFIG_INVALID', `${what}: expected host:port, got ${JSON.stringify(s)}`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export const formatHostPort = (h: HostPort): string =>
  h.host.includes(':') ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`;

function positive(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v <= 0)
    throw new MvirtError('CONFIG_INVALID', `${what} must be a positive number`);
  return v;
}

export function resolveOptions(o: BrokerOptions): ResolvedOptions {
  if (!o.root || /[+#\s]/.test(o.root) || o.root.endsWith('/'))
    throw new MvirtError(
      'CONFIG_INVALID',
      `broker root ${JSON.stringify(o.root)} is not a topic root`,
    );
  const listen = o.listen === false ? null : parseHostPort(o.listen ?? DEFAULT_LISTEN, 'listen');
  const unixPath =
    o.unixPath === false
      ? null
      : (o.unixPath ?? (o.dataDir ? path.join(o.dataDir, 'mvirt.sock') : null));
  const guestListen = o.guestListen ? parseHostPort(o.guestListen, 'guest listen') : null;
  if (guestListen && !o.verifyAgentToken)
    throw new MvirtError('CONFIG_INVALID', 'a guest listener needs verifyAgentToken');
  return {
    root: o.root,
    listen,
    unixPath,
    ws: o.ws ? parseHostPort(o.ws, 'ws') : null,
    wsPath: o.wsPath ?? '/mqtt',
    guestListen,
    verifyAgentToken: o.verifyAgentToken ?? null,
    verifyControllerToken: o.verifyControllerToken ?? null,
    allowAnonymous: o.allowAnonymous ?? false,
    tls: o.tls ?? null,
    gate: o.gate,
    maxPacketSize: positive(o.maxPacketSize, MiB, 'maxPacketSize'),
    agentMaxPacketSize: positive(o.agentMaxPacketSize, MiB, 'agentMaxPacketSize'),
    maxConnectSize: positive(o.maxConnectSize, 64 * 1024, 'maxConnectSize'),
    // 8 MiB: a stuck subscriber during an output flood cost mvirtd +33.5 MiB
    // of RSS with 16 (the bound is 32 per flood); one message larger
    // than this still goes to a client that keeps up (frame-guard.ts).
    maxQueuedBytes: positive(o.maxQueuedBytes, 8 * MiB, 'maxQueuedBytes'),
    connectTimeoutMs: positive(o.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
    keepaliveLimitS: o.keepaliveLimitS ?? 0,
    maxConnections: positive(o.maxConnections, 1024, 'maxConnections'),
    retainedLimits: o.retainedLimits ?? DEFAULT_RETAINED_LIMITS,
    loginLimits: o.loginLimits ?? DEFAULT_LOGIN_LIMITS,
    queueLimits: o.queueLimits ?? DEFAULT_QUEUE_LIMITS,
    agentBudget: agentBudget(o.agentBudget),
  };
}

function agentBudget(o: Partial<AgentBudgetLimits> = {}): AgentBudgetLimits {
  const d = DEFAULT_AGENT_BUDGET;
  return {
    packetsPerS: positive(o.packetsPerS, d.packetsPerS, 'agentBudget.packetsPerS'),
    packetBurst: positive(o.packetBurst, d.packetBurst, 'agentBudget.packetBurst'),
    bytesPerS: positive(o.bytesPerS, d.bytesPerS, 'agentBudget.bytesPerS'),
    byteBurst: positive(o.byteBurst, d.byteBurst, 'agentBudget.byteBurst'),
  };
}
