/**
 * Per-controller quotas on queued messages (issue 11): a controller with a
 * persistent session (clean session off) and QoS 1 subscriptions has every
 * matching message queued in the broker while it is offline, and kept until
 * it acknowledges them while online; aedes bounds neither (128 MiB were
 * queued in the issue's attack, and more was possible). Each identity
 * (acl.ts identityOf: a user, a unix user, anonymous) may have at most
 * `maxMessages` messages and `maxBytes` of payload queued over all its
 * client ids; beyond that, new messages are not queued for it (the client
 * catches up with `job.logs`, `events.query` and retained state), counted,
 * and logged once per identity until its queue falls below the limit again.
 *
 * aedes' memory persistence keeps the queues; this wraps its three queue
 * methods on the broker's instance (the packets carry a broker-unique counter, which
 * is how a removed packet is recognised), since aedes offers no hook there.
 */
import type { Aedes, AedesPublishPacket } from 'aedes';
import type { MvirtLogger } from '../log.js';

export interface QueueLimits {
  maxMessages: number;
  maxBytes: number;
}

/** 10,000 messages or 16 MiB per controller, whichever comes first. */
export const DEFAULT_QUEUE_LIMITS: QueueLimits = {
  maxMessages: 10_000,
  maxBytes: 16 * 1024 * 1024,
};

type Packet = Pick<AedesPublishPacket, 'payload'> & { brokerId?: string; brokerCounter?: number };
type Sub = { clientId: string };

interface Account {
  messages: number;
  bytes: number;
  dropped: number;
  warned: boolean;
}

export interface QueueQuota {
  usage(identity: string): { messages: number; bytes: number; dropped: number };
}

const keyOf = (p: Packet): string => `${p.brokerId ?? ''}:${p.brokerCounter ?? 0}`;
const sizeOf = (p: Packet): number =>
  typeof p.payload === 'string' ? Buffer.byteLength(p.payload) : (p.payload?.length ?? 0);

/** Put the quota on `aedes`' queues (its persistence, wrapped in place). */
export function applyQueueQuota(
  aedes: Aedes,
  limits: QueueLimits,
  /** The identity that owns a client id (null: count it under the client id itself). */
  identityOf: (clientId: string) => string | null,
  log: MvirtLogger,
): QueueQuota {
  const accounts = new Map<string, Account>();
  /** What each client id has queued: packet key → [identity, bytes]. */
  const queued = new Map<string, Map<string, [string, number]>>();

  const account = (identity: string): Account => {
    let a = accounts.get(identity);
    if (!a) accounts.set(identity, (a = { messages: 0, bytes: 0, dropped: 0, warned: false }));
    return a;
  };

  /** Whether the message may be queued for this client; accounts it if so. */
  function admit(clientId: string, packet: Packet): boolean {
    const identity = identityOf(clientId) ?? clientId;
    const a = account(identity);
    const bytes = sizeOf(packet);
    if (a.messages + 1 > limits.maxMessages || a.bytes + bytes > limits.maxBytes) {
      a.dropped++;
      if (!a.warned) {
        a.warned = true;
        log.warn(
          { identity, clientId, messages: a.messages, bytes: a.bytes, limits },
          'queue quota reached: messages for this controller are not queued until it catches up',
        );
      }
      return false;
    }
    let mine = queued.get(clientId);
    if (!mine) queued.set(clientId, (mine = new Map()));
    const key = keyOf(packet);
    if (mine.has(key)) return true; // the same message again (a resend): already counted
    mine.set(key, [identity, bytes]);
    a.messages++;
    a.bytes += bytes;
    return true;
  }

  function release(clientId: string, packet: Packet | undefined): void {
    if (!packet) return;
    const mine = queued.get(clientId);
    const entry = mine?.get(keyOf(packet));
    if (!mine || !entry) return;
    mine.delete(keyOf(packet));
    if (mine.size === 0) queued.delete(clientId);
    const a = account(entry[0]);
    a.messages--;
    a.bytes -= entry[1];
    if (a.warned && a.messages < limits.maxMessages && a.bytes < limits.maxBytes / 2) {
      a.warned = false;
      log.info(
        { identity: entry[0], dropped: a.dropped },
        'queue quota: this controller caught up',
      );
    }
    if (a.messages === 0 && !a.warned) accounts.delete(entry[0]);
  }

  const p = (aedes as unknown as { persistence: unknown }).persistence as {
    outgoingEnqueue(sub: Sub, packet: Packet): Promise<void>;
    outgoingEnqueueCombi(subs: Sub[], packet: Packet): Promise<void>;
    outgoingClearMessageId(client: { id: string }, packet: Packet): Promise<Packet | undefined>;
  };
  const enqueue = p.outgoingEnqueue.bind(p);
  const enqueueCombi = p.outgoingEnqueueCombi.bind(p);
  const clear = p.outgoingClearMessageId.bind(p);
  p.outgoingEnqueue = async (sub, packet) => {
    if (admit(sub.clientId, packet)) await enqueue(sub, packet);
  };
  p.outgoingEnqueueCombi = async (subs, packet) => {
    const allowed = subs.filter((s) => admit(s.clientId, packet));
    if (allowed.length > 0) await enqueueCombi(allowed, packet);
  };
  p.outgoingClearMessageId = async (client, packet) => {
    const removed = await clear(client, packet);
    release(client.id, removed);
    return removed;
  };

  return {
    usage(identity) {
      const a = accounts.get(identity);
      return { messages: a?.messages ?? 0, bytes: a?.bytes ?? 0, dropped: a?.dropped ?? 0 };
    },
  };
}
