/**
 * The hostile guest's ACL attack (issue 11), host side: every MQTT session a
 * job that took its VM's agent channel over (hostile-guest.sh, H_MODE=acl)
 * opens on that channel, built here with the project's encoders, and what
 * each one must get back.
 *
 * The broker's rules shape the plan: a refused SUBSCRIBE only gets SUBACK
 * 0x80 and the session stays, so every out-of-subtree filter goes in one
 * session (SUBSCRIBEs of many filters each); a refused PUBLISH or CONNECT
 * ends the session (MQTT 3.1.1 has no negative acknowledgement), so each
 * forbidden publish and each CONNECT variant gets a session of its own. The
 * guest waits for the host to close a session before it opens the next.
 *
 * Every forged payload carries `marker` (never a topic or client id: mvirtd
 * logs those, and its log lines must not look like a leak), so a controller
 * subscribed to `#` can tell whether any of it got through.
 */
import { AGENT_DOWN, AGENT_PROTOCOL_VERSION } from '../protocol/agent.js';
import { encodeCbor } from '../protocol/codec.js';
import { RPC_METHODS } from '../protocol/rpc.js';
import { AGENT_DOWN_KINDS, AGENT_UP_KINDS, type AgentDownKind } from '../protocol/topics.js';
import { encodeConnect, encodePublish, encodeSubscribe, type ConnectFields } from './broker-raw.js';
import { agentConnect, agentPayload, hostileHello } from './hostile-guest.js';

export interface AclTargets {
  /** `<prefix>/<hostId>` */
  root: string;
  /** The VM whose channel is taken over. */
  hostileId: string;
  /** Another VM, running `victimJobId` meanwhile. */
  victimId: string;
  victimJobId: string;
  /** A controller's client id (its reply namespace is forged into). */
  spyClientId: string;
  /** A controller's real credentials: on an agent channel they must change nothing. */
  admin: { username: string; password: string };
  /** In every forged payload. */
  marker: string;
}

export interface SubscribePacket {
  messageId: number;
  filters: string[];
  qos: 0 | 1 | 2;
  /** Per filter: must it be granted (its own down/ at QoS ≤ 1) or refused (0x80)? */
  granted: boolean[];
}

export type AclExpect =
  /** CONNACK 0, then a SUBACK per packet with exactly these grants. */
  | { kind: 'subscribe'; packets: SubscribePacket[] }
  /** CONNACK 0, the hello's PUBACK, none for the forbidden publish (id 2), the host closes. */
  | { kind: 'publish'; topic: string; refusedBy: 'acl' | 'guard' }
  /** The last CONNACK (if any) is one of these, and the host closes. */
  | { kind: 'connect'; connack: number[] }
  /** CONNACK 0, the hello's PUBACK, no SUBACK: the host closes on the malformed filter. */
  | { kind: 'malformed'; filter: string };

export interface AclSession {
  name: string;
  /** What the guest writes once the session's host end is there. */
  bytes: Buffer;
  /**
   * Written once `afterBytes` came back (CONNACK and the hello's PUBACK): the
   * broker has handed the hello to mvirtd by then. Sent at once, a refusal
   * right behind the hello closed the channel before mvirtd heard the hello,
   * and a channel closed without a hello backs the host's reconnect off up to
   * 5 s.
   */
  then?: { afterBytes: number; bytes: Buffer };
  /** How long the guest waits for the host to close before it sends DISCONNECT itself. */
  holdS: number;
  expect: AclExpect;
}

/** What the forged commands (exec, job.run, console input) would write on the victim. */
export const PWNED_FILE = '/tmp/hostile-pwned';
/** A topic outside the host's root, where a controller may publish (retained) but an agent not. */
export const OUTSIDE_ROOT_TOPIC = 'hostile/x';

/** The forged publishes' packet id; the hello before them has id 1. */
export const FORBIDDEN_PACKET_ID = 2;
/** CONNACK (4 bytes) and the hello's PUBACK (4). */
const GREETED_BYTES = 8;
/** A refusal closes the session at once: waiting this long for it only costs time when it fails. */
const REFUSAL_HOLD_S = 20;

const levels = (filter: string): string[] => filter.split('/');

/** Every filter that replaces some levels of `topic` by `+`, or cuts it with `#` after a level. */
function wildcardVariants(topic: string): string[] {
  const parts = levels(topic);
  const out: string[] = [];
  for (let mask = 0; mask < 1 << parts.length; mask++) {
    const v = parts.map((p, i) => (mask & (1 << i) ? '+' : p));
    out.push(v.join('/'));
    for (let k = 0; k < v.length; k++) out.push([...v.slice(0, k), '#'].join('/'));
  }
  return out;
}

/**
 * Out-of-subtree filters, several thousand: wildcards at every level, `$`
 * topics, another VM's agent topics, rpc, VM and job topics, reply
 * namespaces, and lookalikes of the VM's own down/ prefix (case, empty
 * levels, a neighbour id, Unicode, control characters, lengths past the
 * bounds). None starts with the VM's own `agent/<id>/down/`.
 */
export function forbiddenFilters(t: AclTargets): string[] {
  const [prefix, host] = levels(t.root) as [string, string];
  const R = t.root;
  const own = `${R}/agent/${t.hostileId}`;
  const vic = `${R}/agent/${t.victimId}`;
  const hand = [
    '#',
    '+',
    '+/#',
    '+/+',
    '+/+/#',
    '/#',
    '//#',
    '+/+/+/+/+/+',
    `${prefix}/#`,
    `${prefix}/+/agent/#`,
    `${prefix}/+/agent/+/up/#`,
    `${prefix}/+/agent/+/down/#`,
    `${R}/agent/+/down/+`,
    '$SYS/#',
    '$SYS/+',
    '$SYS/+/#',
    '$SYS/broker/clients/#',
    '$share/g/#',
    `$share/g/${own}/down/#`,
    `$share/g/${vic}/up/#`,
    `${R}/status`,
    `${R}/events`,
    `${R}/vm/${t.hostileId}/#`,
    `${R}/vm/${t.victimId}/console/in`,
    `${prefix}/_clients/#`,
    `${prefix}/_clients/+/replies`,
    `${prefix}/_clients/${t.spyClientId}/replies`,
    `${prefix}/_clients/${t.spyClientId}/#`,
    own,
    `${own}/down`,
    `${own}x/down/#`,
    `${own}-x/down/#`,
    `${R}/agent/${t.hostileId.toUpperCase()}/down/#`,
    `${R}//agent/${t.hostileId}/down/#`,
    `/${own}/down/#`,
    `${own}//down/#`,
    `${own}/Down/#`,
    ` ${own}/down/#`,
    `${prefix.toUpperCase()}/${host}/agent/${t.hostileId}/down/#`,
    `${prefix}/${host}x/agent/${t.hostileId}/down/#`,
    `${R}/\u0430gent/${t.hostileId}/down/#`,
    `${vic}\u0000/up/#`,
    `${R}/\u0007/#`,
    '\u007f/#',
    `${vic}/up/\u001b[2J`,
    `${'x/'.repeat(20)}#`,
    `${'y'.repeat(600)}/#`,
    'a#',
    ...RPC_METHODS.map((m) => `${R}/rpc/${m}`),
  ];
  const bases = [
    `${own}/down/exec`,
    `${vic}/up/output`,
    `${vic}/down/exec`,
    `${R}/vm/${t.victimId}/state`,
    `${R}/job/${t.victimJobId}/output`,
    `${R}/rpc/vm.kill`,
  ];
  // Ids of VMs that do not exist (yet): another VM's subtree is never open.
  const others = Array.from({ length: 250 }, (_, i) => `vm-${i.toString(16).padStart(8, '0')}`);
  const perVm = others.flatMap((id) => [
    `${R}/agent/${id}/#`,
    ...AGENT_UP_KINDS.map((k) => `${R}/agent/${id}/up/${k}`),
    ...AGENT_DOWN_KINDS.map((k) => `${R}/agent/${id}/down/${k}`),
  ]);
  const ownDown = `${own}/down/`;
  return [...new Set([...hand, ...bases.flatMap(wildcardVariants), ...perVm])].filter(
    (f) => !f.startsWith(ownDown),
  );
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));

function downPayload(kind: AgentDownKind, msg: unknown): Buffer {
  AGENT_DOWN[kind].parse(msg);
  return encodeCbor(msg);
}

/** The one SUBSCRIBE session: controls first, then every forbidden filter in packets of `per`. */
function subscribeSession(t: AclTargets, holdS: number, per = 400): AclSession {
  const ownDown = `${t.root}/agent/${t.hostileId}/down`;
  const forbidden = forbiddenFilters(t);
  // Few packets of many filters: aedes queues at most 42 packets that arrive
  // before its CONNACK and drops the connection beyond that.
  const packets: SubscribePacket[] = [
    // Its own down/ is granted: the session is live and the packets well formed.
    { messageId: 2, filters: [`${ownDown}/#`, `${ownDown}/+`], qos: 1, granted: [true, true] },
    // One packet, both answers: each filter is judged on its own.
    {
      messageId: 3,
      filters: ['#', `${ownDown}/ping`, '$SYS/#'],
      qos: 1,
      granted: [false, true, false],
    },
    // An agent never gets QoS 2, even on its own topics.
    { messageId: 4, filters: [`${ownDown}/exec`], qos: 2, granted: [false] },
  ];
  for (let i = 0; i < forbidden.length; i += per) {
    const filters = forbidden.slice(i, i + per);
    packets.push({
      messageId: 10 + packets.length,
      filters,
      qos: 1,
      granted: filters.map(() => false),
    });
  }
  const bytes = Buffer.concat([
    agentConnect(t.hostileId),
    hostileHello(t.root, t.hostileId),
    ...packets.map((p) => encodeSubscribe(p.messageId, p.filters, p.qos)),
  ]);
  return { name: 'subscribe', bytes, holdS, expect: { kind: 'subscribe', packets } };
}

interface Forgery {
  name: string;
  topic: string;
  payload: Buffer;
  qos?: 0 | 1 | 2;
  retain?: boolean;
  refusedBy?: 'acl' | 'guard';
  /** Instead of the agent's own CONNECT. */
  connect?: ConnectFields;
}

/**
 * Filters with a wildcard out of place: aedes closes the connection on them
 * before any ACL (MQTT 3.1.1 allows that for a malformed packet), so each
 * gets a session of its own. (`a#` passes aedes' check: mvirtd's own filter
 * check refuses it, with the forbidden filters.)
 */
function malformedSessions(t: AclTargets): AclSession[] {
  const malformed = ['#/#', '+a/#', `${t.root}/agent/+x/#`, '#\u0000'];
  return malformed.map((filter, i) => ({
    name: `subscribe-malformed:${i + 1}`,
    bytes: Buffer.concat([agentConnect(t.hostileId), hostileHello(t.root, t.hostileId)]),
    then: { afterBytes: GREETED_BYTES, bytes: encodeSubscribe(5, [filter], 1) },
    holdS: REFUSAL_HOLD_S,
    expect: { kind: 'malformed', filter },
  }));
}

/** Forbidden publishes, each in its own session after a CONNECT and a hello. */
function forgeries(t: AclTargets): Forgery[] {
  const [prefix] = levels(t.root) as [string];
  const R = t.root;
  const own = `${R}/agent/${t.hostileId}`;
  const vic = `${R}/agent/${t.victimId}`;
  const m = t.marker;
  const pwn = ['sh', '-c', `echo ${m} >${PWNED_FILE}`];
  const replyTo = `${prefix}/_clients/${t.spyClientId}/replies`;
  const log = agentPayload('log', { level: 'error', message: m });
  return [
    {
      name: 'rpc-vm-kill',
      topic: `${R}/rpc/vm.kill`,
      payload: json({ id: m, replyTo, params: { vm: t.victimId } }),
    },
    {
      name: 'rpc-job-run',
      topic: `${R}/rpc/job.run`,
      payload: json({ id: m, replyTo, params: { vm: t.victimId, argv: pwn } }),
    },
    {
      name: 'rpc-vm-delete-retained',
      topic: `${R}/rpc/vm.delete`,
      payload: json({ id: m, params: { vm: t.victimId } }),
      retain: true,
    },
    {
      name: 'victim-up-output',
      topic: `${vic}/up/output`,
      payload: agentPayload('output', {
        jobId: t.victimJobId,
        seq: 1,
        stream: 'stdout',
        data: Buffer.from(`${m}\n`),
      }),
    },
    {
      name: 'victim-up-exit',
      topic: `${vic}/up/exit`,
      payload: agentPayload('exit', {
        jobId: t.victimJobId,
        seq: 0,
        exitCode: 0,
        signal: null,
        oomKilled: false,
        timedOut: false,
        error: m,
        startedAt: 1,
        finishedAt: 2,
      }),
    },
    {
      name: 'victim-up-hello',
      topic: `${vic}/up/hello`,
      payload: agentPayload('hello', {
        protocol: AGENT_PROTOCOL_VERSION,
        agentVersion: '0.0.0-hostile',
        kernel: m,
        hostname: t.victimId,
        pid: 1,
        boot: { initS: 1, agentStartS: 2, connectedS: 3 },
        jobs: [],
      }),
    },
    { name: 'victim-up-log-qos0', topic: `${vic}/up/log`, payload: log, qos: 0 },
    {
      name: 'victim-down-exec',
      topic: `${vic}/down/exec`,
      payload: downPayload('exec', { id: 'hostile-1', jobId: 'job-0badc0ffee00', argv: pwn }),
    },
    {
      name: 'victim-down-signal',
      topic: `${vic}/down/signal`,
      payload: downPayload('signal', { jobId: t.victimJobId, signal: 'SIGKILL' }),
    },
    {
      name: 'victim-down-power',
      topic: `${vic}/down/power`,
      payload: downPayload('power', { id: 'hostile-2', action: 'poweroff' }),
    },
    {
      name: 'own-down-exec',
      topic: `${own}/down/exec`,
      payload: downPayload('exec', { id: 'hostile-3', jobId: 'job-0badc0ffee01', argv: pwn }),
    },
    {
      name: 'vm-state-retained',
      topic: `${R}/vm/${t.victimId}/state`,
      payload: json({ id: t.victimId, state: 'failed', reason: m }),
      retain: true,
    },
    // Empty and retained: would erase the daemon's own retained record.
    {
      name: 'vm-state-erase',
      topic: `${R}/vm/${t.victimId}/state`,
      payload: Buffer.alloc(0),
      retain: true,
    },
    { name: 'status-erase', topic: `${R}/status`, payload: Buffer.alloc(0), retain: true },
    {
      name: 'job-state-retained',
      topic: `${R}/job/${t.victimJobId}/state`,
      payload: json({ jobId: t.victimJobId, state: 'failed', reason: m }),
      retain: true,
    },
    {
      name: 'job-output',
      topic: `${R}/job/${t.victimJobId}/output`,
      payload: json({ seq: 1, stream: 'stdout', data: m }),
    },
    {
      name: 'console-in',
      topic: `${R}/vm/${t.victimId}/console/in`,
      payload: Buffer.from(`echo ${m} >${PWNED_FILE}\n`),
    },
    { name: 'events', topic: `${R}/events`, payload: json({ kind: 'hostile', message: m }) },
    { name: 'sys', topic: '$SYS/hostile', payload: Buffer.from(m) },
    { name: 'spy-replies', topic: replyTo, payload: json({ id: m, ok: true, result: m }) },
    {
      name: 'outside-root-retained',
      topic: OUTSIDE_ROOT_TOPIC,
      payload: Buffer.from(m),
      retain: true,
    },
    { name: 'own-up-retained', topic: `${own}/up/log`, payload: log, retain: true },
    { name: 'other-host', topic: `${prefix}/other-host/agent/${t.hostileId}/up/log`, payload: log },
    // QoS 2 on its own up/: the frame guard drops it before aedes sees it.
    { name: 'own-up-qos2', topic: `${own}/up/log`, payload: log, qos: 2, refusedBy: 'guard' },
    // An empty client id becomes agent-<own id>: accepted, and just as confined.
    {
      name: 'empty-id-victim-output',
      topic: `${vic}/up/output`,
      payload: agentPayload('output', {
        jobId: t.victimJobId,
        seq: 2,
        stream: 'stdout',
        data: Buffer.from(m),
      }),
      connect: { clientId: '', clean: true, keepalive: 30 },
    },
    // A controller's real user name and password change nothing on the channel.
    {
      name: 'admin-credentials-rpc',
      topic: `${R}/rpc/vm.kill`,
      payload: json({ id: m, replyTo, params: { vm: t.victimId } }),
      connect: { clientId: `agent-${t.hostileId}`, clean: true, keepalive: 30, ...t.admin },
    },
  ];
}

function publishSession(t: AclTargets, f: Forgery): AclSession {
  return {
    name: `publish:${f.name}`,
    bytes: Buffer.concat([
      f.connect ? encodeConnect(f.connect) : agentConnect(t.hostileId),
      hostileHello(t.root, t.hostileId),
    ]),
    then: {
      afterBytes: GREETED_BYTES,
      bytes: encodePublish(f.topic, f.payload, {
        qos: f.qos ?? 1,
        retain: f.retain === true,
        messageId: FORBIDDEN_PACKET_ID,
      }),
    },
    holdS: REFUSAL_HOLD_S,
    expect: { kind: 'publish', topic: f.topic, refusedBy: f.refusedBy ?? 'acl' },
  };
}

/** CONNECT variants: odd client ids, persistent sessions, wills on forbidden topics. */
function connectSessions(t: AclTargets): AclSession[] {
  const R = t.root;
  const own = `agent-${t.hostileId}`;
  const vic = `${R}/agent/${t.victimId}`;
  const m = t.marker;
  const base = { clean: true, keepalive: 30 } as const;
  const will = (topic: string, retain = false) => ({
    ...base,
    clientId: own,
    will: { topic, payload: m, retain, qos: 1 as const },
  });
  const variants: Array<[string, ConnectFields, number[]]> = [
    ['id-victim', { ...base, clientId: `agent-${t.victimId}` }, [2]],
    ['id-hash', { ...base, clientId: '#' }, [2]],
    ['id-long', { ...base, clientId: 'a'.repeat(60_000) }, [2]],
    ['id-control', { ...base, clientId: `${own}\u0001` }, [2]],
    ['id-nul', { ...base, clientId: `${own}\u0000` }, [2]],
    ['id-spy', { ...base, clientId: t.spyClientId }, [2]],
    ['id-agent-plus', { ...base, clientId: 'agent-+' }, [2]],
    ['persistent', { ...base, clientId: own, clean: false }, [5]],
    // An agent's session must be clean: that is checked before the empty id.
    ['persistent-empty-id', { ...base, clientId: '', clean: false }, [5]],
    ['will-victim-up', will(`${vic}/up/output`), [5]],
    ['will-victim-down', will(`${vic}/down/exec`), [5]],
    ['will-rpc', will(`${R}/rpc/vm.kill`), [5]],
    ['will-vm-state-retained', will(`${R}/vm/${t.victimId}/state`, true), [5]],
    ['will-own-up-retained', will(`${R}/agent/${t.hostileId}/up/log`, true), [5]],
    ['will-sys', will('$SYS/hostile'), [5]],
    ['will-outside-root', will('hostile/will'), [5]],
    ['will-wildcard', will('#'), [5]],
  ];
  const sessions: AclSession[] = variants.map(([name, c, connack]) => ({
    name: `connect:${name}`,
    bytes: encodeConnect(c),
    holdS: REFUSAL_HOLD_S,
    expect: { kind: 'connect', connack },
  }));
  // A CONNECT inside a live session starts a new one on the channel
  // (channel-sessions.ts): the new one is judged afresh, not inherited.
  const restart = (name: string, c: ConnectFields, connack: number[]): AclSession => ({
    name: `restart:${name}`,
    bytes: Buffer.concat([agentConnect(t.hostileId), hostileHello(t.root, t.hostileId)]),
    then: { afterBytes: GREETED_BYTES, bytes: encodeConnect(c) },
    holdS: REFUSAL_HOLD_S,
    expect: { kind: 'connect', connack },
  });
  sessions.push(
    restart('as-victim', { ...base, clientId: `agent-${t.victimId}` }, [2]),
    restart('will-rpc', will(`${R}/rpc/vm.kill`), [5]),
  );
  return sessions;
}

/**
 * The whole attack, in order: the SUBSCRIBE session (held `subscribeHoldS`
 * while the victim prints), then publishes (and malformed SUBSCRIBEs) and
 * CONNECT variants alternating.
 * A refused CONNECT sends no hello, so the host's reconnect backoff (reset by
 * a hello, doubled by each close) would grow over consecutive ones; a
 * publish session between two of them keeps it at its minimum.
 */
export function aclPlan(t: AclTargets, subscribeHoldS: number): AclSession[] {
  const pubs = [...forgeries(t).map((f) => publishSession(t, f)), ...malformedSessions(t)];
  const conns = connectSessions(t);
  const rest: AclSession[] = [];
  for (let i = 0; i < Math.max(pubs.length, conns.length); i++) {
    if (pubs[i]) rest.push(pubs[i]!);
    if (conns[i]) rest.push(conns[i]!);
  }
  return [subscribeSession(t, subscribeHoldS), ...rest];
}
