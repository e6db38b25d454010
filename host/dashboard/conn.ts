/**
 * The dashboard's broker connection: MQTT over WebSocket on the page's own
 * origin (mvirtd --http serves `/mqtt`), logged in as `/session` says. It is
 * a controller like any other: RPC requests on `<root>/rpc/<method>` with a
 * reply topic of its own, subject to the same authentication and ACL.
 */
import mqtt from 'mqtt';
import type { DashboardSession } from '../../protocol/http.js';
import type { ParamsOf, ReplyEnvelope, ResultOf, RpcMethod } from '../../protocol/rpc.js';
import { replyTopicFor, topicMatches, topics, type Topics } from '../../protocol/topics.js';

export type ConnState = 'connecting' | 'connected' | 'offline' | 'error';

export interface Conn {
  readonly session: DashboardSession;
  readonly prefix: string;
  readonly t: Topics;
  call<M extends RpcMethod>(method: M, params?: ParamsOf<M>): Promise<ResultOf<M>>;
  /** Subscribe (again after a reconnect); cb gets every matching message. */
  subscribe(filter: string, cb: (topic: string, payload: Uint8Array) => void): void;
  close(): void;
}

export class RpcError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

const RPC_TIMEOUT_MS = 60_000;

function randomHex(bytes: number): string {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return [...a].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Connect as `/session` says (the caller validates it, see main.ts). */
export function connect(
  session: DashboardSession,
  onState: (s: ConnState, why?: string) => void,
): Conn {
  const prefix = session.root.slice(0, session.root.length - session.hostId.length - 1);
  const t = topics(session.root);
  const clientId = `dashboard-${randomHex(6)}`;
  const replyTo = replyTopicFor(prefix, clientId);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = mqtt.connect(`${scheme}://${location.host}${session.mqttPath}`, {
    clientId,
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 2000,
    connectTimeout: 10_000,
    // mqtt.js would run its keepalive timers in a blob: worker, which the page's CSP forbids.
    timerVariant: 'native',
    ...(session.username !== null
      ? { username: session.username, password: session.password ?? '' }
      : {}),
  });

  const pending = new Map<string, (r: ReplyEnvelope) => void>();
  const subs: { filter: string; cb: (topic: string, payload: Uint8Array) => void }[] = [];
  const decoder = new TextDecoder();
  let seq = 0;

  client.on('connect', () => {
    onState('connected');
    // A clean session forgets subscriptions: (re)subscribe everything; retained
    // state arrives again and replaces what the page shows.
    client.subscribe([replyTo, ...new Set(subs.map((s) => s.filter))], { qos: 0 });
  });
  client.on('reconnect', () => onState('connecting'));
  client.on('offline', () => onState('offline'));
  client.on('error', (err) => onState('error', err.message));
  client.on('message', (topic, payload) => {
    if (topic === replyTo) {
      try {
        const r = JSON.parse(decoder.decode(payload)) as ReplyEnvelope;
        const w = r.id !== undefined ? pending.get(r.id) : undefined;
        if (w && r.id !== undefined) {
          pending.delete(r.id);
          w(r);
        }
      } catch {
        // not a reply of ours
      }
      return;
    }
    for (const s of subs) if (topicMatches(s.filter, topic)) s.cb(topic, payload);
  });

  return {
    session,
    prefix,
    t,
    call(method, params) {
      const id = `d-${++seq}`;
      const body = JSON.stringify(params === undefined ? { id, replyTo } : { id, replyTo, params });
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new RpcError('TIMEOUT', `no reply to ${method}`));
        }, RPC_TIMEOUT_MS);
        pending.set(id, (r) => {
          clearTimeout(timer);
          if (r.ok) resolve(r.result as ResultOf<typeof method>);
          else reject(new RpcError(r.error.code, r.error.message));
        });
        client.publish(t.rpc(method), body, { qos: 0 });
      });
    },
    subscribe(filter, cb) {
      subs.push({ filter, cb });
      if (client.connected) client.subscribe(filter, { qos: 0 });
    },
    close() {
      client.end(true);
    },
  };
}
