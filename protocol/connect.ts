/**
 * Reaching mvirt over MQTT, for the typed client (client.ts): broker
 * addresses and the connection with advice on failure, host discovery
 * from the retained status topics, and lenient payload decoding.
 */
import type { IClientOptions, MqttClient } from 'mqtt';
import net from 'node:net';
import { decode } from './client-codec.js';
import { MvirtError } from './errors.js';
import type { HostStatus } from './records.js';
import { brokerTopic, topicMatches } from './topics.js';

/**
 * `<tag>-<12 hex digits>`. Web Crypto rather than node:crypto, which costs
 * whoever imports this module 2 ms to load (the CLI, which makes its own id:
 * host/cli/run.ts).
 */
export const randomClientId = (tag = 'mvirt'): string =>
  `${tag}-${Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(6))).toString('hex')}`;

/**
 * Turn a broker address into MQTT.js options. Paths and `unix://` URLs become
 * unix-socket connections (mvirtd listens on `<data-dir>/mvirt.sock`).
 */
export function brokerOptions(url: string): { url?: string; opts: IClientOptions } {
  const unix = /^(?:unix|mqtt\+unix):\/\/(.+)$/.exec(url);
  if (unix) return { opts: { protocol: 'mqtt', unixSocket: true, path: unix[1]! } };
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    // No scheme: a path to a unix socket (./mvirt.sock, /var/lib/mvirt/mvirt.sock).
    return { opts: { protocol: 'mqtt', unixSocket: true, path: url } };
  }
  return { url, opts: {} };
}

/**
 * An MQTT.js client for these options, connecting. A unix socket or plain
 * `mqtt://` (the CLI's usual case) gets MQTT.js's client class on a socket
 * of our own: MQTT.js's `connect()` loads every transport it has (WebSocket,
 * SOCKS, TLS) first, which was 20–30 ms of `mvirt vm ls`'s start (Node 20,
 * 2-core dev machine). Everything else (TLS, WebSocket, a SOCKS proxy from
 * MQTTJS_SOCKS_PROXY) goes through `connect()`.
 */
async function mqttClient(url: string | undefined, options: IClientOptions): Promise<MqttClient> {
  const socket = plainSocket(url, options);
  if (socket === null) {
    const { connect } = await import('mqtt');
    return url === undefined ? connect(options) : connect(url, options);
  }
  return new (await mqttClientClass())(socket, options);
}

/**
 * MQTT.js's client class, from its CommonJS module (`exports.default`): Node
 * and esbuild give it as the namespace's `default.default`, tsx (the tests)
 * as `default`.
 */
async function mqttClientClass(): Promise<typeof MqttClient> {
  const ns = (await import('mqtt/lib/client')) as unknown as {
    default: typeof MqttClient | { default: typeof MqttClient };
  };
  return 'default' in ns.default ? ns.default.default : ns.default;
}

/** A stream builder for a unix socket or a plain TCP broker; null when connect() must do it. */
function plainSocket(url: string | undefined, options: IClientOptions): (() => net.Socket) | null {
  if (url === undefined) {
    const path = options.path;
    return options.unixSocket && path ? () => net.createConnection({ path }) : null;
  }
  if (process.env.MQTTJS_SOCKS_PROXY) return null;
  // Host and port only: credentials or a query in the URL are connect()'s to read.
  const m = /^(?:mqtt|tcp):\/\/(\[[0-9a-f:.]+\]|[\w.-]+)(?::(\d+))?\/?$/i.exec(url);
  if (!m) return null;
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  const port = m[2] !== undefined ? Number(m[2]) : 1883;
  return () => net.createConnection({ host, port });
}

export const noReplyHint = (prefix: string, hostId: string): string =>
  `is mvirtd running with --host-id ${hostId} and --prefix ${prefix}?`;

type ConnectOptions = Parameters<typeof openBroker>[1];

/** Connect to the broker; failures become CONNECTION_FAILED / NOT_AUTHORIZED with advice. */
export async function connectBroker(url: string, o: ConnectOptions): Promise<MqttClient> {
  return (await openBroker(url, o)).connected;
}

/**
 * connectBroker in two steps: resolves as soon as the connection is being
 * opened, with the promise of the broker's CONNACK (`connected`) and of the
 * CONNECT sent (`opened`, or the CONNACK or failure where the transport
 * says nothing of its connection, as WebSocket streams). The CLI builds the
 * protocol's schemas in between (run.ts defaultClientFactory): mvirtd answers
 * a unix-socket CONNECT only once it knows the peer (host/broker/peer.ts,
 * which starts at the accept; 15 ms on a busy 2-core machine), time the
 * schemas then fill.
 */
export async function openBroker(
  url: string,
  o: {
    clientId: string;
    username?: string;
    password?: string;
    ca?: string | Buffer;
    connectTimeoutMs?: number;
    will?: IClientOptions['will'];
    /**
     * MQTT.js's writeCache (default true): 65,536 number buffers built at the
     * first packet (10 ms), which save an allocation per packet after. A
     * client that sends a handful of packets (the CLI) is faster without.
     */
    writeCache?: boolean;
  },
): Promise<{ connected: Promise<MqttClient>; opened: Promise<void> }> {
  const { url: u, opts } = brokerOptions(url);
  const timeoutMs = o.connectTimeoutMs ?? 5000;
  const options: IClientOptions = {
    ...opts,
    clientId: o.clientId,
    protocolVersion: 4,
    clean: true,
    // A CLI must fail fast and say why instead of retrying silently forever.
    reconnectPeriod: 0,
    connectTimeout: timeoutMs,
    ...(o.writeCache === false ? { writeCache: false } : {}),
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
    ...(o.ca !== undefined ? { ca: o.ca } : {}),
    ...(o.will ? { will: o.will } : {}),
  };
  const client = await mqttClient(u, options);
  const connected = new Promise<MqttClient>((resolve, reject) => {
    const fail = (err: MvirtError): void => {
      clearTimeout(timer);
      client.removeAllListeners('connect');
      client.end(true);
      reject(err);
    };
    const timer = setTimeout(
      () =>
        fail(
          new MvirtError(
            'CONNECTION_FAILED',
            `cannot connect to ${url}: no answer within ${timeoutMs} ms: is mvirtd running and listening there?`,
          ),
        ),
      timeoutMs,
    );
    client.once('connect', () => {
      clearTimeout(timer);
      client.removeListener('error', onError);
      client.removeListener('close', onClose);
      resolve(client);
    });
    const onError = (err: Error & { code?: string | number }): void => {
      // CONNACK return codes 4 (bad user name or password) and 5 (not authorized).
      if (err.code === 4 || err.code === 5) {
        fail(
          new MvirtError(
            'NOT_AUTHORIZED',
            `the broker at ${url} refused the connection (${err.message}): check the user name and password`,
            { cause: err },
          ),
        );
        return;
      }
      fail(
        new MvirtError(
          'CONNECTION_FAILED',
          `cannot connect to ${url} (${err.message}): is mvirtd running? start it with \`mvirtd --data-dir <dir>\``,
          { cause: err },
        ),
      );
    };
    const onClose = (): void =>
      fail(
        new MvirtError(
          'CONNECTION_FAILED',
          `cannot connect to ${url}: the connection was closed before the broker accepted it`,
        ),
      );
    client.on('error', onError);
    client.on('close', onClose);
  });
  // The socket's own 'connect' listener (registered when MQTT.js wrote the
  // CONNECT) flushes it before this one runs.
  const opened = new Promise<void>((resolve) => {
    client.stream.once('connect', () => resolve());
    connected.then(
      () => resolve(),
      () => resolve(),
    );
  });
  return { connected, opened };
}

export function asRecord(v: unknown): Record<string, unknown> | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : null;
}

/** Decode a payload leniently: null when it is empty or unreadable. */
export function tryDecode(payload: Buffer): unknown {
  if (payload.length === 0) return null;
  try {
    return decode(payload);
  } catch {
    return null;
  }
}

/**
 * Find the mvirt hosts under a prefix from their retained status. There is no
 * end-of-retained marker in MQTT 3.1.1, so wait until statuses stop arriving
 * (a short quiet period after the first one), bounded by `timeoutMs` (which is
 * also how long it takes to conclude that no host is there).
 */
export async function discoverHosts(
  mqtt: MqttClient,
  prefix: string,
  o: { timeoutMs?: number; quietMs?: number } = {},
): Promise<HostStatus[]> {
  return (await discover(mqtt, prefix, { ...o, owner: false })).hosts;
}

/**
 * The host to talk to when none is named. mvirtd's embedded broker says whose
 * it is (`<prefix>/_broker`, retained, which controllers may not publish):
 * that host, as soon as the record arrives. Elsewhere (an older mvirtd, a
 * broker shared by hosts) the one online host of the retained statuses
 * (discoverHosts, pickHost), after their quiet period: 60–80 ms of
 * `mvirt vm ls`'s ~230 ms on the 2-core dev machine, which the record saves.
 * `also`: more subscriptions for the same SUBSCRIBE packet (the client's reply
 * topic), which saves a round trip; refusing one of them fails.
 */
export async function findHost(
  mqtt: MqttClient,
  prefix: string,
  where: string,
  o: { timeoutMs?: number; quietMs?: number; also?: Record<string, { qos: 0 | 1 }> } = {},
): Promise<string> {
  const { hosts, owner } = await discover(mqtt, prefix, { ...o, owner: true });
  return owner ?? pickHost(hosts, prefix, where);
}

async function discover(
  mqtt: MqttClient,
  prefix: string,
  o: {
    timeoutMs?: number;
    quietMs?: number;
    owner: boolean;
    also?: Record<string, { qos: 0 | 1 }>;
  },
): Promise<{ hosts: HostStatus[]; owner: string | null }> {
  const filter = `${prefix}/+/status`;
  const ownerTopic = brokerTopic(prefix);
  const found = new Map<string, HostStatus>();
  let owner: string | null = null;
  const quietMs = o.quietMs ?? 60;
  const timeoutMs = o.timeoutMs ?? 2000;
  let poke: () => void = () => {};
  // Not imported with this module: the CLI opens its connection before it
  // builds the schemas (openBroker).
  const { BrokerOwner } = await import('./records.js');
  const onMessage = (topic: string, payload: Buffer): void => {
    if (o.owner && topic === ownerTopic) {
      const r = BrokerOwner.safeParse(tryDecode(payload));
      if (r.success) owner = r.data.hostId;
      poke();
      return;
    }
    if (!topicMatches(filter, topic)) return;
    const hostId = topic.slice(prefix.length + 1, -'/status'.length);
    const s = asRecord(tryDecode(payload));
    if (!s) found.delete(hostId);
    else found.set(hostId, { ...(s as HostStatus), hostId: String(s.hostId ?? hostId) });
    poke();
  };
  mqtt.on('message', onMessage);
  try {
    const subs = { [filter]: { qos: 0 as const }, ...o.also };
    const granted = await subscribeAll(
      mqtt,
      o.owner ? { ...subs, [ownerTopic]: { qos: 0 } } : subs,
    );
    const refused = Object.keys(subs).filter((_, i) => (granted[i]! & 0x80) !== 0);
    if (refused.length > 0)
      throw new Error(`the broker refused the subscription to ${refused.join(', ')}`);
    await new Promise<void>((resolve) => {
      const hard = setTimeout(done, timeoutMs);
      // The quiet period starts with the first status: retained statuses come
      // in one burst, and a slow broker must not make a live host look absent.
      let quiet: NodeJS.Timeout | undefined =
        found.size > 0 ? setTimeout(done, quietMs) : undefined;
      poke = () => {
        clearTimeout(quiet);
        quiet = setTimeout(done, quietMs);
        if (owner !== null) done();
      };
      if (owner !== null) done();
      function done(): void {
        clearTimeout(hard);
        clearTimeout(quiet);
        resolve();
      }
    });
    const leave = mqtt.unsubscribeAsync(o.owner ? [filter, ownerTopic] : filter);
    // Nothing waits for the UNSUBACK but a plain listing: the broker handles
    // the UNSUBSCRIBE before whatever the client sends next.
    if (owner === null) await leave;
    else leave.catch(() => {});
  } finally {
    mqtt.removeListener('message', onMessage);
  }
  return { hosts: [...found.values()].sort((a, b) => a.hostId.localeCompare(b.hostId)), owner };
}

/** SUBSCRIBE to all of `subs` in one packet; resolves with each one's SUBACK code (0x80: refused). */
function subscribeAll(mqtt: MqttClient, subs: Record<string, { qos: 0 | 1 }>): Promise<number[]> {
  const n = Object.keys(subs).length;
  return new Promise((resolve, reject) => {
    mqtt.subscribe(subs, (err, _granted, packet) => {
      if (!err) return resolve(Array<number>(n).fill(0));
      // MQTT.js fails the whole call when one filter is refused: say which.
      const codes = (packet as { granted?: number[] } | undefined)?.granted;
      if (codes?.length === n) resolve(codes);
      else reject(err);
    });
  });
}

/** Pick the one online host, or say precisely why there is none. */
export function pickHost(hosts: HostStatus[], prefix: string, where: string): string {
  const online = hosts.filter((h) => h.online);
  if (online.length === 1) return online[0]!.hostId;
  if (online.length === 0) {
    const offline = hosts.map((h) => h.hostId);
    throw new MvirtError(
      'CONNECTION_FAILED',
      offline.length > 0
        ? `no mvirt host is online under prefix '${prefix}' at ${where} (offline: ${offline.join(', ')}): is mvirtd running?`
        : `no mvirt host announces itself under prefix '${prefix}' at ${where}: is mvirtd running, with this --prefix?`,
      { details: { hosts: offline } },
    );
  }
  throw new MvirtError(
    'CONFIG_INVALID',
    `several mvirt hosts are online under prefix '${prefix}' (${online.map((h) => h.hostId).join(', ')}): choose one (hostId option, \`--host\` or MVIRT_HOST)`,
    { details: { hosts: online.map((h) => h.hostId) } },
  );
}
