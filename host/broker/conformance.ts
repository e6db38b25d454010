/**
 * MQTT 3.1.1 rules aedes and mqtt-packet do not enforce, where the server
 * must close the connection (checked against Debian's Mosquitto 2.0, which
 * closes in each case; test/integration/broker-conformance.test.ts):
 *
 *  - CONNECT: password flag without user name flag [MQTT-3.1.2-22]; will QoS 3
 *    [MQTT-3.1.2-14]; an empty client id with clean session off gets CONNACK 2
 *    [MQTT-3.1.3-8] (aedes would invent an id and resume nothing);
 *  - ill-formed UTF-8 in any string [MQTT-1.5.3-1]: client id, will topic,
 *    user name, PUBLISH topic, SUBSCRIBE/UNSUBSCRIBE filters (mqtt-packet
 *    decodes them with replacement characters, which would alias topics);
 *  - SUBSCRIBE and UNSUBSCRIBE without a filter [MQTT-3.8.3-3, 3.10.3-2].
 *
 * Agents (the VM's own channel or its guest TCP connection) are held to more
 * (issue 12): a clean session only (CONNACK 5 otherwise: nothing of an agent
 * session may outlive its connection in mvirtd's memory) and PUBLISH at QoS
 * 0 or 1 (a QoS 2 message waits in the broker for a PUBREL that a hostile
 * guest never sends; the agent never uses QoS 2). See agentHeaderProblem.
 *
 * These look at raw packet bodies, which the frame guard captures (only for
 * these packet types, and only a PUBLISH's topic), hand-written because the
 * parser's decoded strings have already lost the bytes.
 */
import { isUtf8 } from 'node:buffer';

export interface Violation {
  reason: string;
  /** A CONNACK return code to send before closing (MQTT requires one for some cases). */
  connack?: number;
}

export const CONNECT = 1;
export const PUBLISH = 3;
export const SUBSCRIBE = 8;
export const UNSUBSCRIBE = 10;

/** Packet types whose body (or, for PUBLISH, topic) the guard captures. */
export const CHECKED = new Set([CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE]);

/** A length-prefixed string at i: [start, end) or null when it overruns. */
function field(b: Buffer, i: number): [number, number] | null {
  if (i + 2 > b.length) return null;
  const end = i + 2 + b.readUInt16BE(i);
  return end > b.length ? null : [i + 2, end];
}

const utf8 = (b: Buffer, f: [number, number]): boolean => isUtf8(b.subarray(f[0], f[1]));

function connectProblem(b: Buffer, agent: boolean): Violation | null {
  const name = field(b, 0);
  if (!name) return null; // mqtt-packet reports malformed headers itself
  let i = name[1] + 1; // protocol level
  if (i >= b.length) return null;
  const flags = b[i]!;
  i += 3; // flags, keepalive
  const hasUser = (flags & 0x80) !== 0;
  const hasPassword = (flags & 0x40) !== 0;
  const hasWill = (flags & 0x04) !== 0;
  const clean = (flags & 0x02) !== 0;
  if (hasPassword && !hasUser) return { reason: 'password flag without user name flag' };
  if (hasWill && ((flags >> 3) & 3) === 3) return { reason: 'will QoS 3' };
  if (agent && !clean) return { reason: 'an agent session must be clean', connack: 5 };
  const id = field(b, i);
  if (!id) return null;
  if (!utf8(b, id)) return { reason: 'client id is not well-formed UTF-8' };
  if (id[0] === id[1] && !clean)
    return { reason: 'empty client id with clean session off', connack: 2 };
  i = id[1];
  if (hasWill) {
    const topic = field(b, i);
    if (!topic) return null;
    if (!utf8(b, topic)) return { reason: 'will topic is not well-formed UTF-8' };
    const msg = field(b, topic[1]);
    if (!msg) return null;
    i = msg[1];
  }
  if (hasUser) {
    const user = field(b, i);
    if (user && !utf8(b, user)) return { reason: 'user name is not well-formed UTF-8' };
  }
  return null;
}

function filtersProblem(b: Buffer, subscribe: boolean): Violation | null {
  let i = 2; // message id
  let n = 0;
  while (i < b.length) {
    const f = field(b, i);
    if (!f) return null;
    if (!utf8(b, f)) return { reason: 'topic filter is not well-formed UTF-8' };
    i = f[1] + (subscribe ? 1 : 0);
    n++;
  }
  return n === 0
    ? { reason: `${subscribe ? 'SUBSCRIBE' : 'UNSUBSCRIBE'} without a topic filter` }
    : null;
}

/**
 * Check a captured body. For PUBLISH, `body` holds at least the topic (the
 * guard stops capturing after it).
 */
export function packetProblem(type: number, body: Buffer, agent = false): Violation | null {
  switch (type) {
    case CONNECT:
      return connectProblem(body, agent);
    case PUBLISH: {
      const t = field(body, 0);
      return t && !utf8(body, t) ? { reason: 'topic is not well-formed UTF-8' } : null;
    }
    case SUBSCRIBE:
      return filtersProblem(body, true);
    case UNSUBSCRIBE:
      return filtersProblem(body, false);
    default:
      return null;
  }
}

/** An agent's fixed header (type and flags byte): QoS 2 PUBLISH is refused. */
export function agentHeaderProblem(header: number): string | null {
  return header >> 4 === PUBLISH && ((header >> 1) & 3) >= 2
    ? 'agents may publish at QoS 0 or 1 only'
    : null;
}

/** How many body bytes to capture for a packet of this type and length (0 = none). */
export function captureLength(type: number, length: number): number {
  if (!CHECKED.has(type)) return 0;
  return type === PUBLISH ? Math.min(length, 2) : length; // PUBLISH: topic length first
}

/** After the first 2 bytes of a PUBLISH body: how many to capture in all (the topic). */
export const publishTopicEnd = (first2: Buffer, length: number): number =>
  Math.min(length, 2 + first2.readUInt16BE(0));
