/**
 * The ACL attack of hostile-acl.ts as a job, and what comes back: the guest
 * (hostile-guest.sh, H_MODE=acl) gets every session's bytes as base64 on
 * stdin (too big for the environment) and their order, hold and place in
 * H_PLAN; it keeps what the host sent back in each session in a file of its
 * own, and a later job (once the VM's agent is back) prints its log and
 * those files. Judging is per session, against its AclExpect.
 */
import { JOB_STDIN_BYTES } from '../protocol/rpc.js';
import { splitPackets, type RawPacket } from './broker-raw.js';
import { FORBIDDEN_PACKET_ID, type AclSession } from './hostile-acl.js';
import { HOSTILE_ARGV, HOSTILE_LOG, HOSTILE_SCRIPT } from './hostile-guest.js';

/** Where the guest keeps each session's received bytes (`NNN.in`). */
export const ACL_DIR = '/tmp/hostile-acl';

export interface AclJob {
  argv: string[];
  env: Record<string, string>;
  stdin: string;
}

/** The attack job; `boundS` bounds the whole attack in the guest (the agent comes back after it). */
export function aclJob(sessions: AclSession[], boundS: number): AclJob {
  let offset = 0;
  const plan = sessions.map((s) => {
    if (/\s/.test(s.name)) throw new Error(`session name ${JSON.stringify(s.name)} has a space`);
    const then = s.then ?? { afterBytes: 0, bytes: Buffer.alloc(0) };
    const line = `${s.name} ${s.holdS} ${offset} ${s.bytes.length} ${then.afterBytes} ${then.bytes.length}`;
    offset += s.bytes.length + then.bytes.length;
    return line;
  });
  const stdin = Buffer.concat(
    sessions.flatMap((s) => [s.bytes, s.then?.bytes ?? Buffer.alloc(0)]),
  ).toString('base64');
  if (stdin.length > JOB_STDIN_BYTES)
    throw new Error(`the attack is ${stdin.length} bytes of base64, over job stdin's limit`);
  return {
    argv: [...HOSTILE_ARGV],
    env: {
      H_MODE: 'acl',
      H_SECONDS: String(boundS),
      H_LOG: HOSTILE_LOG,
      H_SCRIPT: HOSTILE_SCRIPT,
      H_PLAN: plan.join('\n'),
    },
    stdin,
  };
}

/** The job that prints the guest's log, then each session's bytes as `== NNN.in` and base64. */
export const ACL_READBACK_ARGV = [
  'sh',
  '-c',
  `cat ${HOSTILE_LOG}; for f in ${ACL_DIR}/*.in; do echo "== \${f##*/}"; base64 "$f"; echo; done`,
];

export interface SessionReport {
  name: string;
  /** host: the host closed it (EOF); guest: it was open after its hold, and the guest's DISCONNECT closed it; nobody: not even that. */
  closedBy: string;
  received: Buffer;
}

export interface AclReport {
  log: string;
  /** Took the channel over and ran to its end. */
  done: boolean;
  sessions: SessionReport[];
}

export function parseAclReport(stdout: string): AclReport {
  const parts = stdout.split(/^== (\d+)\.in$/m);
  const log = parts[0] ?? '';
  const received = new Map<number, Buffer>();
  for (let i = 1; i + 1 < parts.length; i += 2)
    received.set(Number(parts[i]), Buffer.from(parts[i + 1]!.replace(/\s+/g, ''), 'base64'));
  const sessions = [...log.matchAll(/^hostile: session (\d+) (\S+) closed-by=(\w+)/gm)].map(
    (m) => ({
      name: m[2]!,
      closedBy: m[3]!,
      received: received.get(Number(m[1])) ?? Buffer.alloc(0),
    }),
  );
  return { log, done: /^hostile: acl done/m.test(log), sessions };
}

const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const SUBACK = 9;

const topicOf = (p: RawPacket): string => p.body.toString('utf8', 2, 2 + p.body.readUInt16BE(0));

/**
 * What is wrong with one session: anything received from outside the VM's
 * own down/, the victim's marker anywhere in it, and the session's own
 * expectation (SUBACKs, refusals, who closed it).
 */
export function judgeSession(
  plan: AclSession,
  got: SessionReport | undefined,
  o: { ownDown: string; victimMarker: string },
): string[] {
  if (!got) return [`${plan.name}: no report from the guest`];
  const bad: string[] = [];
  const say = (what: string): number => bad.push(`${plan.name}: ${what}`);
  if (got.received.includes(o.victimMarker)) say("received the victim's output marker");
  const { packets, rest } = splitPackets(got.received);
  if (rest.length > 0) say(`${rest.length} trailing bytes of an incomplete packet`);
  for (const p of packets)
    if (p.type === PUBLISH && !topicOf(p).startsWith(o.ownDown))
      say(`received a PUBLISH on ${JSON.stringify(topicOf(p))}`);
  const connacks = packets.filter((p) => p.type === CONNACK).map((p) => p.body[1]!);
  const e = plan.expect;
  switch (e.kind) {
    case 'subscribe': {
      if (connacks[0] !== 0) say(`CONNACK ${connacks[0]} (want 0)`);
      if (got.closedBy !== 'guest') say(`closed by ${got.closedBy} before its hold ended`);
      const subacks = new Map(
        packets
          .filter((p) => p.type === SUBACK)
          .map((p) => [p.body.readUInt16BE(0), [...p.body.subarray(2)]] as const),
      );
      for (const sp of e.packets) {
        const codes = subacks.get(sp.messageId);
        if (!codes) {
          say(`no SUBACK for packet ${sp.messageId}`);
          continue;
        }
        if (codes.length !== sp.filters.length)
          say(`SUBACK ${sp.messageId}: ${codes.length} codes for ${sp.filters.length} filters`);
        sp.filters.forEach((f, i) => {
          const c = codes[i];
          const ok = sp.granted[i] ? c !== undefined && c <= sp.qos : c === 0x80;
          if (!ok)
            say(
              `${JSON.stringify(f)} at QoS ${sp.qos} got ${c} (want ${sp.granted[i] ? 'granted' : '0x80'})`,
            );
        });
      }
      break;
    }
    case 'publish': {
      if (got.closedBy !== 'host') say(`closed by ${got.closedBy}: the publish was not refused`);
      if (connacks[0] !== 0) say(`CONNACK ${connacks[0]} (want 0)`);
      const acked = packets.filter((p) => p.type === PUBACK).map((p) => p.body.readUInt16BE(0));
      if (!acked.includes(1)) say('the hello was not acknowledged: the session never stood');
      if (acked.includes(FORBIDDEN_PACKET_ID)) say('the forbidden publish was acknowledged');
      break;
    }
    case 'malformed': {
      if (got.closedBy !== 'host') say(`closed by ${got.closedBy}: the SUBSCRIBE was served`);
      if (connacks[0] !== 0) say(`CONNACK ${connacks[0]} (want 0)`);
      if (packets.some((p) => p.type === SUBACK)) say('a SUBACK came back');
      break;
    }
    case 'connect': {
      if (got.closedBy !== 'host') say(`closed by ${got.closedBy}: the CONNECT was not refused`);
      const last = connacks[connacks.length - 1];
      if (last !== undefined && !e.connack.includes(last))
        say(`CONNACK ${last} (want ${e.connack.join(' or ')})`);
      break;
    }
  }
  return bad;
}
