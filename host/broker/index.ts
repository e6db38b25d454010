/**
 * The embedded broker: aedes behind mvirt's listeners, size guard, hooks and
 * ACL. Wiring only; each concern lives in its own module:
 *
 *   frame-guard.ts   packet size cap before anything is buffered
 *   authenticate.ts  who a client is (controller, agent)
 *   authorize.ts     what it may publish / subscribe / receive (rules: acl.ts)
 *   sessions.ts      client ids bound to the user that holds them
 *   quotas.ts        retained messages per controller
 *   queue-quota.ts   queued messages per controller
 *   login-limit.ts   failed logins per source and user
 *   listeners.ts     TCP, unix socket, WebSocket, guest TCP
 *   agent-channel.ts per-VM streams
 *   agent-budget.ts  what each VM's agent may send per second
 *   bus.ts           the daemon's in-process publish/subscribe
 *   listening.ts     whether any client subscribes to a topic
 */
import { Aedes } from 'aedes';
import type { Duplex } from 'node:stream';
import type { MvirtLogger } from '../log.js';
import { createAgentBudgets, type AgentBudgets } from './agent-budget.js';
import { agentHandle, createAgentChannelAttacher } from './agent-channel.js';
import { createAuthenticate, createPreConnect } from './authenticate.js';
import {
  createAuthorizeForward,
  createAuthorizePublish,
  createAuthorizeSubscribe,
} from './authorize.js';
import { createBus, DAEMON_SENDER } from './bus.js';
import {
  agentClientId,
  clientsPrefixOf,
  replyTopicRefusal,
  type AclContext,
  type Principal,
} from './acl.js';
import { trackListening } from './listening.js';
import { createLoginLimiter } from './login-limit.js';
import { createRetainedQuota } from './quotas.js';
import { applyQueueQuota } from './queue-quota.js';
import { releaseClientId } from './sessions.js';
import type { Actor } from '../auth/actor.js';
import { GuardedStream, guardStream, type FrameLimits } from './frame-guard.js';
import { listenTcp, listenUnix, listenWs, type Listener } from './listeners.js';
import { resolveOptions, type BrokerOptions, type ResolvedOptions } from './options.js';
import { peerCred } from './peer.js';
import { createRegistry, type ConnInfo, type Registry } from './registry.js';
import { createCounters } from './stats.js';
import type { AgentChannelHandle, Broker, Bus, Sender } from './types.js';
import type { BrokerOwner } from '../../protocol/records.js';
import { brokerTopic } from '../../protocol/topics.js';
import { accessOf, loadUserEntries, parseUserEntries, type Users } from './users.js';
import { hashesOf } from './users.js';

export type { BrokerOptions } from './options.js';
export type { Broker, Bus, AgentChannelHandle, LastWill, BrokerStats } from './types.js';
export { hashPassword, verifyPassword } from './passwords.js';

function loadUsers(o: BrokerOptions): Users {
  const users = o.users ? parseUserEntries({ users: o.users }, 'users option') : new Map();
  if (o.usersFile) for (const [k, v] of loadUserEntries(o.usersFile)) users.set(k, v);
  return users;
}

/** What the API learns about a publisher; one object per principal, i.e. per client connection. */
function createSenders(ctx: AclContext) {
  const cache = new WeakMap<Principal, Sender>();
  return (p: Principal): Sender => {
    let s = cache.get(p);
    if (s) return s;
    if (p.role === 'agent') {
      s = {
        actor: { kind: 'guest', vmId: p.vmId },
        access: { role: 'viewer', scope: null },
        replyRefusal: () => 'a guest gets no replies',
      };
    } else {
      const actor: Actor =
        p.user !== null
          ? { kind: 'user', user: p.user, clientId: p.clientId }
          : p.unixUser
            ? { kind: 'unix', user: p.unixUser, clientId: p.clientId }
            : { kind: 'anonymous', clientId: p.clientId };
      s = { actor, access: p.access, replyRefusal: (t) => replyTopicRefusal(ctx, p, t) };
    }
    cache.set(p, s);
    return s;
  };
}

function limitsFor(o: ResolvedOptions, agent: boolean): FrameLimits {
  return {
    maxPacketSize: agent ? o.agentMaxPacketSize : o.maxPacketSize,
    maxConnectSize: o.maxConnectSize,
    maxQueuedBytes: o.maxQueuedBytes,
    agent,
  };
}

/** Wrap a stream in the size guard, remember where it came from, hand it to aedes. */
function createAdmitter(
  aedes: Aedes,
  registry: Registry,
  live: Set<Duplex>,
  o: ResolvedOptions,
  budgets: AgentBudgets,
  log: MvirtLogger,
) {
  return function admit(stream: Duplex, ci: ConnInfo): GuardedStream {
    const agent = ci.transport === 'guest' || ci.transport === 'agent-channel';
    const guarded = guardStream(stream, limitsFor(o, agent), (reason) =>
      log.warn(
        {
          clientId: guarded.client?.id ?? null,
          transport: ci.transport,
          remote: ci.remote,
          vmId: ci.vmId,
          reason,
        },
        'connection dropped',
      ),
    );
    // A channel's VM is known now; a guest TCP agent's once it logs in (see 'client').
    if (ci.vmId !== undefined) guarded.setBudget(budgets.of(ci.vmId));
    registry.conns.set(guarded, ci);
    live.add(guarded);
    guarded.once('close', () => live.delete(guarded));
    aedes.handle(guarded);
    return guarded;
  };
}

/**
 * ws buffers whole messages before the guard sees them, so its own cap bounds
 * that; a message may carry more than one MQTT packet (browser clients batch),
 * hence the room above one packet. The guard still enforces the per-packet cap.
 */
const wsMaxPayload = (o: ResolvedOptions): number => 2 * o.maxPacketSize + 64 * 1024;

async function openListeners(
  o: ResolvedOptions,
  admit: (stream: Duplex, ci: ConnInfo) => Duplex,
  log: MvirtLogger,
): Promise<{ listeners: Listener[]; addresses: Broker['addresses'] }> {
  const listeners: Listener[] = [];
  const addresses: { tcp?: string; unix?: string; ws?: string; guest?: string } = {};
  // Loopback is not an identity: only the unix socket is `local`.
  const remote = (addr: string | undefined): Pick<ConnInfo, 'remote' | 'local'> => ({
    remote: addr ?? null,
    local: false,
  });
  const controllerListen = (transport: string) => ({
    tls: o.tls,
    ...(o.gate ? { gate: o.gate } : {}),
    onRefused: (remote: string | null, reason: string) =>
      log.warn({ transport, remote, reason }, 'connection refused'),
  });
  try {
    if (o.listen) {
      const l = await listenTcp(
        o.listen,
        o.maxConnections,
        (s) => admit(s, { transport: 'tcp', ...remote(s.remoteAddress) }),
        controllerListen('tcp'),
      );
      listeners.push(l);
      addresses.tcp = l.address;
    }
    if (o.unixPath) {
      const l = await listenUnix(o.unixPath, o.maxConnections, (s) =>
        admit(s, { transport: 'unix', remote: null, local: true, peer: peerCred(s) }),
      );
      listeners.push(l);
      addresses.unix = l.address;
    }
    if (o.ws) {
      const l = await listenWs(
        o.ws,
        o.wsPath,
        wsMaxPayload(o),
        o.maxConnections,
        (s, req) => admit(s, { transport: 'ws', ...remote(req.socket.remoteAddress) }),
        controllerListen('ws'),
      );
      listeners.push(l);
      addresses.ws = l.address;
    }
    if (o.guestListen) {
      const l = await listenTcp(o.guestListen, o.maxConnections, (s) =>
        admit(s, { transport: 'guest', remote: s.remoteAddress ?? null, local: false }),
      );
      listeners.push(l);
      addresses.guest = l.address;
    }
  } catch (err) {
    await Promise.all(listeners.map((l) => l.close()));
    throw err;
  }
  return { listeners, addresses };
}

/**
 * Retain `<prefix>/_broker` {hostId} (protocol/topics.ts brokerTopic): this
 * broker is that host's, the only one publishing on it, so a controller that
 * reads it needs no quiet period to be sure there is no other host. Measured
 * on the 2-core dev machine: `mvirt vm ls` without --host spent 60–80 ms of
 * its ~230 ms in that quiet period (protocol/connect.ts).
 */
function publishOwner(bus: Bus, root: string): Promise<void> {
  const slash = root.lastIndexOf('/');
  const owner: BrokerOwner = { hostId: root.slice(slash + 1) };
  return bus.publish(brokerTopic(root.slice(0, slash)), JSON.stringify(owner), { retain: true });
}

export async function createBroker(options: BrokerOptions, log: MvirtLogger): Promise<Broker> {
  const o = resolveOptions(options);
  const users = loadUsers(options);
  const registry = createRegistry();
  const counters = createCounters();
  const ownerOf = options.ownerOf ?? (() => null);
  const ctx: AclContext = {
    root: o.root,
    clientsPrefix: clientsPrefixOf(o.root),
    ownerOf,
    clientIdentity: (id) => registry.bindings.get(id)?.identity ?? null,
  };
  const deps = { ctx, registry, counters, retained: createRetainedQuota(o.retainedLimits), log };
  const senderFor = createSenders(ctx);
  const budgets = createAgentBudgets(o.agentBudget);
  const daemonPayloads = new WeakSet<object>();

  const aedes = await Aedes.createBroker({
    connectTimeout: o.connectTimeoutMs,
    keepaliveLimit: o.keepaliveLimitS,
    // Only MQTT 3.1 looks at this; ids are bounded by clientIdProblem anyway.
    maxClientsIdLength: 64,
    preConnect: createPreConnect(registry),
    authenticate: createAuthenticate({
      root: o.root,
      registry,
      users: hashesOf(users),
      accessOf: (name) => {
        const u = users.get(name);
        return u ? accessOf(u) : { role: 'viewer', scope: name };
      },
      limiter: createLoginLimiter(o.loginLimits),
      allowAnonymous: o.allowAnonymous,
      verifyAgentToken: o.verifyAgentToken,
      verifyControllerToken: o.verifyControllerToken,
      log,
    }),
    authorizePublish: createAuthorizePublish(deps),
    authorizeSubscribe: createAuthorizeSubscribe(deps),
    authorizeForward: createAuthorizeForward(deps),
  });
  const listening = trackListening(aedes);
  applyQueueQuota(aedes, o.queueLimits, (id) => ctx.clientIdentity(id), log);
  aedes.on('clientError', (client, err) =>
    log.debug({ clientId: client.id, err: err.message }, 'client error'),
  );
  aedes.on('connectionError', (_client, err) =>
    log.debug({ err: err.message }, 'connection error before CONNECT completed'),
  );
  // A guest TCP agent is known only once authenticated: hand its stream to the owner then.
  let guestAgentListener: ((vmId: string, handle: AgentChannelHandle) => void) | null = null;
  aedes.on('client', (client) => {
    const conn = (client as unknown as { conn: Duplex }).conn;
    const ci = registry.conns.get(conn);
    if (ci?.transport !== 'guest') return;
    const vmId = client.id.slice(agentClientId('').length);
    if (conn instanceof GuardedStream) conn.setBudget(budgets.of(vmId));
    guestAgentListener?.(vmId, agentHandle(conn));
  });
  const goneListeners: Array<(clientId: string) => void> = [];
  aedes.on('clientDisconnect', (client) => {
    releaseClientId(registry, client);
    log.debug({ clientId: client.id }, 'client disconnected');
    for (const l of goneListeners) l(client.id);
  });

  const bus = createBus(
    aedes,
    counters,
    log,
    (payload) => {
      const p = registry.senders.get(payload);
      if (p !== undefined) return senderFor(p);
      return daemonPayloads.has(payload) ? DAEMON_SENDER : undefined;
    },
    (payload) => daemonPayloads.add(payload),
  );
  // Every admitted stream, including those that never completed CONNECT
  // (aedes.close() only knows registered clients): close() ends them all.
  const live = new Set<Duplex>();
  const admit = createAdmitter(aedes, registry, live, o, budgets, log);
  let opened: Awaited<ReturnType<typeof openListeners>>;
  try {
    // Whose broker this is, there before the first client can connect.
    await publishOwner(bus, o.root);
    opened = await openListeners(o, admit, log);
  } catch (err) {
    counters.stop();
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw err;
  }
  let closing: Promise<void> | null = null;

  async function close(): Promise<void> {
    const will = bus.lastWill();
    if (will) {
      // Last act before clients go: subscribers connected now see it.
      await bus
        .publish(will.topic, will.payload, { retain: will.retain ?? true, qos: 0 })
        .catch((err: unknown) => log.warn({ err }, 'could not publish the last will'));
    }
    const stopping = opened.listeners.map((l) => l.close());
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    for (const stream of live) stream.destroy();
    await Promise.all(stopping);
    counters.stop();
    log.info('broker closed');
  }

  log.info({ addresses: opened.addresses, root: o.root }, 'broker listening');
  return {
    publish: bus.publish,
    subscribe: bus.subscribe,
    setLastWill: bus.setLastWill,
    attachAgentChannel: createAgentChannelAttacher(
      (stream, vmId) => {
        // The channel itself, not only its sessions: one where no session
        // began yet must end at close() too.
        live.add(stream);
        stream.once('close', () => live.delete(stream));
        return (session: Duplex) =>
          admit(session, { transport: 'agent-channel', remote: null, local: false, vmId });
      },
      () => closing !== null,
      { maxConnectSize: o.maxConnectSize, connectTimeoutMs: o.connectTimeoutMs },
      log,
    ),
    onGuestAgent: (listener) => {
      guestAgentListener = listener;
    },
    onClientGone: (listener) => {
      goneListeners.push(listener);
    },
    attachWebSocket(stream, remoteAddress) {
      if (closing !== null) {
        stream.destroy();
        return;
      }
      admit(stream, { transport: 'ws', remote: remoteAddress ?? null, local: false });
    },
    wsMaxPayload: wsMaxPayload(o),
    addresses: opened.addresses,
    hasSubscriber: (topic) => listening.has(topic),
    clientCount: () => aedes.connectedClients,
    stats: () => counters.snapshot(aedes.connectedClients),
    close: () => (closing ??= close()),
  };
}
