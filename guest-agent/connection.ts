/**
 * The MQTT session over whatever channel the settings name. One fresh
 * mqtt.js client per connection (its own reconnect is off): the outbox is the
 * only buffer, and a stale client can never deliver into a new session.
 * On each connect: subscribe to our down topics, say hello then ready, then
 * let the outbox drain what accumulated meanwhile.
 */
import type { Duplex } from 'node:stream';
import mqttClientModule from 'mqtt/lib/client';
import type { IClientOptions } from 'mqtt/lib/client';
import { topics } from '../protocol/topics.js';
import { createBackoff, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import type { Outbox } from './outbox.js';
import type { Platform } from './platform/types.js';
import type { Settings } from './settings.js';

// mqtt's deep module is CommonJS with `exports.default`; Node (and esbuild in
// node mode) give us module.exports, so take the class from it.
const MqttClient = mqttClientModule.default;
type MqttClient = InstanceType<typeof MqttClient>;

/** mqtt.js's error for a CONNACK out of turn (MQTT reason code 130, protocol error). */
const isDuplicateConnack = (err: Error): boolean =>
  (err as Error & { code?: number }).code === 130 && /duplicate CONNACK/.test(err.message);

export interface ConnectionOptions {
  keepaliveS: number;
  connectTimeoutMs: number;
  backoff: BackoffOptions;
}

export const DEFAULT_CONNECTION_OPTIONS: ConnectionOptions = {
  // TCG guests and a loaded 2-core host can stall for seconds: keep the
  // keepalive generous so a slow guest is not declared dead.
  keepaliveS: 30,
  connectTimeoutMs: 15_000,
  backoff: DEFAULT_BACKOFF,
};

export interface SessionHooks {
  /** Before each connect attempt (the agent re-reads its identity here). */
  prepare?(): Promise<void>;
  /** Who to connect as, asked at each attempt: the client id, ACL subtree and TCP password. */
  who(): { vmId: string; token: string | undefined };
  /** Messages to publish right after connecting, before anything buffered (hello, ready). */
  greet(connectedS: number): Promise<Array<{ topic: string; payload: Buffer }>>;
  onMessage(topic: string, payload: Buffer): void;
  onConnected?(): void;
  onDisconnected?(): void;
  log(level: 'debug' | 'info' | 'warn' | 'error', message: string): void;
}

export interface Connection {
  start(): void;
  stop(): Promise<void>;
  readonly connected: boolean;
}

export function createConnection(
  platform: Platform,
  settings: Settings,
  outbox: Outbox,
  hooks: SessionHooks,
  options: ConnectionOptions = DEFAULT_CONNECTION_OPTIONS,
): Connection {
  const t = topics(settings.root);
  const backoff = createBackoff(options.backoff);
  let current: MqttClient | null = null;
  let connected = false;
  let stopped = true;
  let timer: NodeJS.Timeout | null = null;
  let lastError = '';

  const schedule = (delayMs = backoff.next()) => {
    if (stopped || timer) return;
    timer = setTimeout(() => {
      timer = null;
      void attempt();
    }, delayMs);
  };

  // Log a failing attempt once per distinct reason, not on every retry.
  const noteFailure = (msg: string) => {
    if (msg !== lastError) hooks.log('warn', msg);
    lastError = msg;
  };

  async function credentials(): Promise<Pick<IClientOptions, 'username' | 'password'> | null> {
    if (settings.channel.kind !== 'tcp') return {};
    const { vmId, token: given } = hooks.who();
    const token = given ?? (await platform.readText(settings.tokenPath))?.trim();
    if (!token) {
      noteFailure(`no token in ${settings.tokenPath}: cannot authenticate over tcp`);
      return null;
    }
    return { username: vmId, password: token };
  }

  async function attempt(): Promise<void> {
    if (stopped) return;
    let stream: Duplex;
    try {
      await hooks.prepare?.();
      if (stopped) return;
      const creds = await credentials();
      if (!creds) return schedule();
      stream = await platform.openChannel(settings.channel);
      if (stopped) {
        stream.destroy();
        return;
      }
      // Read once per session: a change of identity only ever happens between attempts.
      const { vmId } = hooks.who();
      const client: MqttClient = new MqttClient(() => stream, {
        protocolVersion: 4,
        clientId: `agent-${vmId}`,
        clean: true,
        keepalive: options.keepaliveS,
        connectTimeout: options.connectTimeoutMs,
        reconnectPeriod: 0,
        resubscribe: false,
        queueQoSZero: false,
        ...creds,
      });
      current = client;
      client.on('error', (err) => {
        // The host's wake for a resumed guest (host/agent/sessions.ts): this
        // session is stale by design, not a fault worth a warning.
        if (!isDuplicateConnack(err)) return noteFailure(`mqtt: ${err.message}`);
        hooks.log('debug', `mqtt: ${err.message}`);
        // mqtt.js has already destroyed the stream; its 'close' comes a turn
        // or more later (88 ms measured under TCG right after a restore, when
        // every path runs for the first time since the TCG cache was empty).
        closed(client, true);
      });
      client.on('message', (topic, payload) => {
        if (current === client) hooks.onMessage(topic, payload);
      });
      client.on('connect', () => void onConnect(client, vmId));
      client.on('close', () => closed(client));
    } catch (err) {
      noteFailure(`channel ${settings.channel.kind}: ${(err as Error).message}`);
      schedule();
    }
  }

  /**
   * The session on `client` is over (once per client): detach, then try
   * again: at once after the host's wake for a resumed guest, whose session
   * was stale by design; after the backoff otherwise.
   */
  function closed(client: MqttClient, atOnce = false): void {
    if (current !== client) return;
    current = null;
    outbox.detach();
    if (connected) {
      connected = false;
      hooks.onDisconnected?.();
    }
    client.end(true);
    schedule(atOnce ? 0 : undefined);
  }

  async function onConnect(client: MqttClient, vmId: string): Promise<void> {
    const connectedS = platform.clock.uptimeS();
    try {
      await client.subscribeAsync(t.agentDownWildcard(vmId), { qos: 1 });
      // Wait for each PUBACK: brokers may fan out packets that arrive in one
      // read concurrently (aedes does), so only acknowledged greetings are sure
      // to reach the host before the backlog the outbox is about to release.
      for (const m of await hooks.greet(connectedS)) {
        if (current !== client) return;
        await client.publishAsync(m.topic, m.payload, { qos: 1 });
      }
    } catch (err) {
      // Subscribing failed on a live connection: drop it and try afresh.
      if (current === client) {
        noteFailure(`session setup: ${(err as Error).message}`);
        client.end(true);
      }
      return;
    }
    if (current !== client) return;
    connected = true;
    lastError = '';
    backoff.reset();
    outbox.attach((e, done) => {
      client.publish(e.topic, e.payload, { qos: e.qos }, (err) => done(err ?? undefined));
    });
    hooks.onConnected?.();
  }

  return {
    start() {
      if (!stopped) return;
      stopped = false;
      void attempt();
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = null;
      const c = current;
      current = null;
      connected = false;
      outbox.detach();
      if (!c) return;
      // A graceful DISCONNECT only makes sense on a live session, and must not
      // hang shutdown if the host has stopped reading.
      const graceful = c.connected ? c.endAsync(false).catch(() => undefined) : null;
      const timeout = new Promise((r) => setTimeout(r, 1000).unref());
      if (graceful) await Promise.race([graceful, timeout]);
      c.end(true);
    },
    get connected() {
      return connected;
    },
  };
}
