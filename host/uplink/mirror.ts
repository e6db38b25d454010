/**
 * How the uplink joins the daemon: every public topic the daemon publishes
 * under `P/<host>/` goes to the embedded broker as before and is mirrored
 * to the uplink; requests arriving over the uplink run as the uplink's
 * sender (docs/security.md, "Controllers on an external broker").
 *
 * Not mirrored: the private agent subtree (`agent/…`: guests stay on their
 * host), requests (`rpc/…`, which only controllers publish) and the serial
 * console (`console/…`: published only while a local client listens, and
 * typing into it is a local controller's business). Replies are not mirrored
 * either: each API server answers on the bus its request came from.
 */
import { decode, sniffEncoding } from '../../protocol/codec.js';
import type { Access } from '../auth/roles.js';
import type { Bus, Sender } from '../broker/types.js';

const PRIVATE = new Set(['agent', 'rpc']);

/** Should a topic the daemon publishes reach the uplink? */
export function mirrored(root: string, topic: string): boolean {
  if (!topic.startsWith(`${root}/`)) return false;
  const rest = topic.slice(root.length + 1).split('/');
  if (PRIVATE.has(rest[0]!)) return false;
  return !(rest[0] === 'vm' && rest[2] === 'console');
}

/**
 * The daemon's bus with the uplink: publish goes to both (the uplink never
 * waits: outbox.ts), subscribe stays local (the uplink API subscribes to the
 * uplink itself).
 */
export function createMirrorBus(local: Bus, uplink: Pick<Bus, 'publish'>, root: string): Bus {
  return {
    publish(topic, payload, opts) {
      if (mirrored(root, topic)) void uplink.publish(topic, payload, opts);
      return local.publish(topic, payload, opts);
    },
    subscribe: (filter, handler) => local.subscribe(filter, handler),
  };
}

/** The client id a reply topic `P/_clients/<id>/replies[/…]` names; null otherwise. */
export function replyClientId(prefix: string, topic: string): string | null {
  const pre = `${prefix}/_clients/`;
  if (!topic.startsWith(pre)) return null;
  const id = topic.slice(pre.length).split('/')[0]!;
  return id.length > 0 ? id : null;
}

function claimedReplyTo(payload: Buffer): string | null {
  try {
    const raw = decode(payload, sniffEncoding(payload)) as { replyTo?: unknown } | null;
    return typeof raw?.replyTo === 'string' ? raw.replyTo : null;
  } catch {
    return null; // the API answers what it cannot decode
  }
}

/**
 * Who sent a request that came over the uplink. The external broker
 * authenticated the publisher and its ACL let it publish on `P/<host>/rpc/…`;
 * MQTT carries nothing of that identity to the subscriber (Mosquitto adds no
 * user property, and one the client sets is only a claim). So every such
 * request gets the one access the operator configured for the uplink, and the
 * audit log names the client id its reply topic claims.
 */
export function uplinkSender(o: { prefix: string; broker: string; access: Access }) {
  const replyRefusal = (topic: string): string | null =>
    replyClientId(o.prefix, topic) === null
      ? `over the uplink replies go only to ${o.prefix}/_clients/<client id>/…`
      : null;
  return (_topic: string, payload: Buffer): Sender => {
    const replyTo = claimedReplyTo(payload);
    const clientId = replyTo === null ? null : replyClientId(o.prefix, replyTo);
    return {
      actor: { kind: 'uplink', broker: o.broker, clientId },
      access: o.access,
      replyRefusal,
    };
  };
}
