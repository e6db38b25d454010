/**
 * aedes `authorizePublish`, `authorizeSubscribe` and `authorizeForward`: one
 * small handler each, all delegating to the pure rules in acl.ts (role, scope
 * and reply namespaces through an AclContext) and to quotas.ts.
 *
 * A refused PUBLISH closes the connection: MQTT 3.1.1 has no negative ack, and
 * silently acknowledging a forged status would hide the attempt from the
 * client's author. A refused subscription is answered with SUBACK 0x80 and
 * the client stays connected. An allowed PUBLISH remembers its publisher
 * (registry.senders) so the API knows who sent a request.
 */
import type { AedesPublishPacket, Client, PublishPacket, Subscription } from 'aedes';
import type { MvirtLogger } from '../log.js';
import {
  identityOf,
  mayReceive,
  publishProblem,
  subscribeProblem,
  type AclContext,
} from './acl.js';
import type { RetainedQuota } from './quotas.js';
import type { Registry } from './registry.js';
import type { Counters } from './stats.js';

interface Deps {
  ctx: AclContext;
  registry: Registry;
  counters: Counters;
  retained: RetainedQuota;
  log: MvirtLogger;
}

export function createAuthorizePublish(d: Deps) {
  return function authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    callback: (error?: Error | null) => void,
  ): void {
    // client is null only for wills left by another broker instance; this
    // broker keeps no persistent wills, so there is nothing legitimate here.
    const principal = client ? d.registry.principals.get(client) : undefined;
    let problem = principal
      ? publishProblem(d.ctx, principal, packet.topic, packet.retain)
      : 'no authenticated client';
    if (problem === null && packet.retain && principal?.role === 'controller')
      problem = d.retained.charge(identityOf(principal), packet.topic, packet.payload.length);
    if (problem !== null) {
      d.log.warn(
        {
          clientId: client?.id ?? null,
          topic: packet.topic,
          retain: packet.retain,
          reason: problem,
        },
        'publish refused, closing connection',
      );
      callback(new Error(`publish to ${JSON.stringify(packet.topic)} refused: ${problem}`));
      return;
    }
    if (typeof packet.payload === 'object') d.registry.senders.set(packet.payload, principal!);
    d.counters.messagesIn++;
    callback(null);
  };
}

export function createAuthorizeSubscribe(d: Deps) {
  return function authorizeSubscribe(
    client: Client,
    sub: Subscription,
    callback: (error: Error | null, subscription?: Subscription | null) => void,
  ): void {
    const principal = d.registry.principals.get(client);
    // An agent never gets QoS 2: its unacknowledged deliveries would wait in
    // mvirtd for a PUBREC a hostile guest never sends. (Refused rather than
    // downgraded: aedes answers SUBACK with the QoS asked before this hook runs.)
    const problem = !principal
      ? 'no authenticated client'
      : principal.role === 'agent' && sub.qos > 1
        ? 'agents subscribe at QoS 0 or 1 only'
        : subscribeProblem(d.ctx, principal, sub.topic);
    if (problem !== null) {
      d.log.warn(
        { clientId: client.id, filter: sub.topic, reason: problem },
        'subscription refused',
      );
      callback(null, null); // SUBACK 0x80 for this filter
      return;
    }
    callback(null, sub);
  };
}

export function createAuthorizeForward(d: Deps) {
  return function authorizeForward(
    client: Client,
    packet: AedesPublishPacket,
  ): AedesPublishPacket | null {
    const principal = d.registry.principals.get(client);
    if (!principal || !mayReceive(d.ctx, principal, packet.topic, packet.payload)) return null;
    d.counters.messagesOut++;
    return packet;
  };
}
