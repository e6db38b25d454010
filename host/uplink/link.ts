/**
 * mvirtd's link to an external MQTT broker (`--uplink`): a Bus on that
 * broker. The daemon mirrors its public topics into it (mirror.ts) and runs a
 * second API server on it, so the whole controller API is served there.
 *
 *  - The last will is a real MQTT will: retained `{hostId, online:false, at}`
 *    on `P/<host>/status`, so the broker itself declares the host offline
 *    when the link dies (1.5 × keepalive after the last packet, or at once
 *    when the TCP connection closes).
 *  - Each connection attempt is a fresh mqtt.js client (reconnectPeriod 0):
 *    mqtt.js repeats a failed attempt at a fixed period, while a broker that
 *    is down should be asked less and less often (backoff 0.5 s doubling to
 *    30 s, ± 20 % so a fleet does not reconnect in step after a broker
 *    restart), and each attempt carries a will with its own `at`.
 *  - Publishing never waits (outbox.ts): while the link is down or holds
 *    more than `maxInFlight` unsent messages, messages wait in the bounded
 *    outbox; after every (re)connect the retained state goes out again.
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { HostStatus, SystemInfo } from '../../protocol/rpc.js';
import { topicMatches } from '../../protocol/topics.js';
import { runAs } from '../auth/actor.js';
import type { Bus, MessageHandler, PublishOpts, Sender } from '../broker/types.js';
import type { MvirtLogger } from '../log.js';
import { createOutbox, type OutMessage } from './outbox.js';
import type { UplinkOptions } from './options.js';

export type UplinkInfo = NonNullable<SystemInfo['uplink']>;

export interface Uplink extends Bus {
  /** Begin connecting (in the background: mvirtd serves locally whether or not the broker is up). */
  start(): void;
  /** Resolves once connected (now, if it is); for tests and logs. */
  connected(): Promise<void>;
  /** Resolves once the link is down (now, if it is). */
  disconnected(): Promise<void>;
  info(): UplinkInfo;
  /** Call `cb` whenever the link comes up or goes down (the daemon refreshes its status). */
  onChange(cb: (connected: boolean) => void): void;
  /**
   * Resolves with the broker's first refusal of a publish or subscription
   * (its ACL: this host's broker user may not use the topic); at once if
   * there was one. For tests and logs.
   */
  refused(): Promise<string>;
  /**
   * Drop the connection without a DISCONNECT, as a crash or a cut cable
   * would (the broker then sends the will); the link reconnects as after any
   * loss. For tests.
   */
  breakLink(): void;
  /** Send what is pending (the offline status last), then DISCONNECT; no will is sent. */
  close(): Promise<void>;
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/**
 * Messages handed to mqtt.js and not yet written (QoS 0) or acknowledged
 * (QoS 1). Beyond it new messages wait in the outbox, whose bound is the
 * operator's (--uplink-buffer): mqtt.js's own queue has none.
 */
const MAX_IN_FLIGHT = 256;

export function createUplink(deps: {
  options: UplinkOptions;
  /** `P/<host>/status` and the host id, for the last will. */
  statusTopic: string;
  hostId: string;
  /** Who sent a message that arrives over the link (mirror.ts uplinkSender). */
  senderOf: (topic: string, payload: Buffer) => Sender;
  log: MvirtLogger;
}): Uplink {
  const { options: o, log } = deps;
  const outbox = createOutbox({ maxQueued: o.bufferMessages, maxRetainedTopics: o.retainedTopics });
  const handlers = new Map<string, Set<MessageHandler>>();
  let client: MqttClient | null = null;
  let up = false;
  let closing = false;
  let since: string | null = null;
  let connects = 0;
  let lastError: string | null = null;
  let refusals = 0;
  let firstRefusal: string | null = null;
  const refusalWaiters: ((why: string) => void)[] = [];
  function refuse(why: string): void {
    refusals++;
    lastError = why;
    if (firstRefusal !== null) return;
    firstRefusal = why;
    for (const w of refusalWaiters.splice(0)) w(why);
  }
  let backoff = BACKOFF_MIN_MS;
  let retry: NodeJS.Timeout | undefined;
  let inFlight = 0;
  /** Non-retained messages handed to the current client and not yet done. */
  let unsent = 0;
  /** Waiting for the link to come up (true) or go down (false). */
  const waiters = new Map<() => void, boolean>();
  const listeners: ((connected: boolean) => void)[] = [];
  const wake = (state: boolean): void => {
    for (const cb of listeners) cb(state);
    for (const [w, want] of [...waiters]) if (want === state) w();
  };
  const when = (state: boolean): Promise<void> =>
    up === state
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const w = (): void => {
            waiters.delete(w);
            resolve();
          };
          waiters.set(w, state);
        });

  function will(): NonNullable<IClientOptions['will']> {
    const status: HostStatus = { hostId: deps.hostId, online: false, at: new Date().toISOString() };
    return {
      topic: deps.statusTopic,
      payload: Buffer.from(JSON.stringify(status)),
      qos: 1,
      retain: true,
    };
  }

  function send(c: MqttClient, m: OutMessage): void {
    inFlight++;
    if (!m.retain) unsent++;
    c.publish(m.topic, m.payload, { qos: m.qos, retain: m.retain }, (err) => {
      if (c !== client) return; // a closed connection's leftovers: already counted as lost
      inFlight--;
      if (!m.retain) unsent--;
      if (err) {
        // MQTT 5: the broker answered (e.g. 0x87 not authorized: its ACL).
        refuse(`publish to ${m.topic} refused: ${err.message}`);
        log.warn({ topic: m.topic, err: err.message }, 'the uplink broker refused a publish');
        if (!m.retain) outbox.lost(1);
      } else if (m.retain && m.payload.length === 0) outbox.sentTombstone(m.topic);
      drain();
    });
  }

  function drain(): void {
    const c = client;
    if (!up || c === null) return;
    // Pending retained state first: it is what a controller looks at.
    let room = MAX_IN_FLIGHT - inFlight;
    if (room <= 0) return;
    const state = outbox.takeRetained(room);
    for (const m of state) send(c, m);
    room -= state.length;
    if (room <= 0) return;
    for (const m of outbox.take(room)) send(c, m);
  }

  function onConnect(c: MqttClient): void {
    up = true;
    connects++;
    backoff = BACKOFF_MIN_MS;
    since = new Date().toISOString();
    lastError = null;
    log.info({ broker: o.broker, connects }, 'uplink connected');
    for (const filter of handlers.keys()) subscribeOn(c, filter);
    // The whole retained state first (the will may stand in the status topic),
    // then whatever waited.
    outbox.resendRetained();
    drain();
    wake(true);
  }

  function subscribeOn(c: MqttClient, filter: string): void {
    c.subscribe(filter, { qos: 1 }, (err, granted) => {
      const refused = granted?.find((g) => g.qos >= 0x80);
      if (err || refused) {
        refuse(`subscribe ${filter} refused${err ? `: ${err.message}` : ''}`);
        log.error({ filter, err }, 'the uplink broker refused a subscription; check its ACL');
      }
    });
  }

  function onDown(c: MqttClient, why: string): void {
    if (c !== client) return;
    client = null;
    c.removeAllListeners();
    c.on('error', () => undefined); // late errors of a dead client
    c.end(true);
    if (up) {
      log.warn({ broker: o.broker, why }, 'uplink lost; reconnecting');
      since = new Date().toISOString();
    }
    up = false;
    wake(false);
    // What mqtt.js held is gone with the connection: retained state goes out
    // again on reconnect, the rest is counted as dropped.
    outbox.lost(unsent);
    unsent = 0;
    inFlight = 0;
    lastError = why;
    if (closing) return;
    const delay = Math.round(backoff * (0.8 + Math.random() * 0.4));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retry = setTimeout(connect, delay);
    retry.unref();
  }

  function connect(): void {
    if (closing) return;
    const opts: IClientOptions = {
      protocolVersion: 5,
      clientId: `mvirtd-${deps.hostId}`,
      clean: true,
      keepalive: o.keepaliveS,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      will: will(),
      ...(o.username !== null ? { username: o.username } : {}),
      ...(o.password !== null ? { password: o.password } : {}),
      ...(o.ca !== null ? { ca: o.ca } : {}),
    };
    const c = mqtt.connect(o.url, opts);
    client = c;
    c.on('connect', () => {
      // Requests, replies and state are small messages, each wanted at once:
      // without this, Nagle holds a reply until the broker's delayed ACK of
      // the previous segment (measured: ~20-40 ms per request; see docs/fleet.md).
      (c.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      onConnect(c);
    });
    c.on('message', (topic, payload) => deliver(topic, payload));
    c.on('error', (err) => {
      lastError = err.message;
      log.warn({ broker: o.broker, err: err.message }, 'uplink error');
    });
    c.on('close', () => onDown(c, lastError ?? 'connection closed'));
    c.on('disconnect', (packet) => {
      // MQTT 5 server DISCONNECT, e.g. 0x8E session taken over: another
      // mvirtd runs with this host id.
      lastError = `broker disconnected us (reason ${packet.reasonCode ?? '?'})`;
    });
  }

  function deliver(topic: string, payload: Buffer): void {
    for (const [filter, set] of handlers) {
      if (!topicMatches(filter, topic)) continue;
      const sender = deps.senderOf(topic, payload);
      for (const h of set) {
        try {
          // As the local bus does: what the handler appends to the event log names the sender.
          runAs(sender, () => h(topic, payload, sender));
        } catch (err) {
          log.error({ err, topic }, 'uplink handler threw');
        }
      }
    }
  }

  function publish(topic: string, payload: Buffer | string, p: PublishOpts = {}): Promise<void> {
    const m: OutMessage = {
      topic,
      payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
      // QoS 1 whatever the caller asked: a bridged Mosquitto relays it at QoS 1,
      // and the far broker's immediate PUBACK is what lets the bridge's own
      // socket (no TCP_NODELAY in Mosquitto 2.0.11) send the next message at
      // once; a QoS 0 message there waited for the far side's delayed ACK
      // (~40 ms) before whatever followed it, e.g. a reply. Measured, a
      // fleet job.run to running: 95 ms with QoS 0, 41–46 ms with QoS 1
      // (bench/fleet.ts, docs/fleet.md).
      qos: 1,
      retain: p.retain ?? false,
    };
    const c = client;
    if (m.retain) {
      outbox.add(m); // pending, and remembered for the next reconnect
      drain();
    } else if (up && c !== null && inFlight < MAX_IN_FLIGHT && outbox.figures().queued === 0)
      send(c, m);
    else outbox.add(m);
    return Promise.resolve();
  }

  return {
    publish,
    subscribe(filter, handler) {
      let set = handlers.get(filter);
      if (!set) {
        set = new Set();
        handlers.set(filter, set);
        if (up && client) subscribeOn(client, filter);
      }
      set.add(handler);
      return Promise.resolve(() => {
        set.delete(handler);
        if (set.size === 0) {
          handlers.delete(filter);
          if (up && client) client.unsubscribe(filter);
        }
        return Promise.resolve();
      });
    },
    start() {
      if (client === null && retry === undefined) connect();
    },
    onChange(cb) {
      listeners.push(cb);
    },
    connected: () => when(true),
    disconnected: () => when(false),
    info: () => ({
      broker: o.broker,
      connected: up,
      since,
      connects,
      lastError,
      refused: refusals,
      ...outbox.figures(),
    }),
    refused: () =>
      firstRefusal !== null
        ? Promise.resolve(firstRefusal)
        : new Promise<string>((resolve) => refusalWaiters.push(resolve)),
    breakLink() {
      client?.stream.destroy();
    },
    async close() {
      closing = true;
      clearTimeout(retry);
      const c = client;
      if (c === null) return;
      // All pending state now, beyond the in-flight bound: the offline status
      // must reach the broker before the DISCONNECT makes it drop the will.
      if (up) for (const m of outbox.takeRetained(Number.MAX_SAFE_INTEGER)) send(c, m);
      drain();
      client = null; // its close is ours: no reconnect, nothing counted lost
      // end(false) waits for QoS 1 acknowledgements (the offline status is one)
      // and then DISCONNECTs cleanly, so the broker drops the will.
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          c.end(true);
          resolve();
        }, 5000);
        t.unref();
        c.end(false, {}, () => {
          clearTimeout(t);
          resolve();
        });
      });
      up = false;
    },
  };
}
