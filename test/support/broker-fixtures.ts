/**
 * Fixtures for broker tests: a broker on real sockets in a temp folder with a
 * log that tests can await, mqtt.js clients over TCP or any stream, a unix
 * socket pair for agent channels, and message waiters (no sleeps: everything
 * waits for an event, with generous timeouts that only bite on failure).
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { createBroker, type Broker, type BrokerOptions } from '../../host/broker/index.js';
import { createLogger } from '../../host/log.js';
import { TEST_ADMIN } from '../../harness/test-admin.js';

export { TEST_ADMIN } from '../../harness/test-admin.js';

export const ROOT = 'mvirt/test';
export const TIMEOUT = 10_000;

export interface LogEntry {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export interface TestBroker {
  broker: Broker;
  dir: string;
  logs: LogEntry[];
  /** Resolves with the first log entry (past or future) matching pred. */
  waitForLog(pred: (e: LogEntry) => boolean, timeoutMs?: number): Promise<LogEntry>;
  tcpPort(): number;
  guestPort(): number;
  close(): Promise<void>;
}

export function withTimeout<T>(p: Promise<T>, what: string, ms = TIMEOUT): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

const portOf = (hostPort: string | undefined): number => Number(hostPort?.split(':').pop());

export async function startBroker(o: Partial<BrokerOptions> = {}): Promise<TestBroker> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-broker-'));
  const logs: LogEntry[] = [];
  const waiters: Array<{ pred: (e: LogEntry) => boolean; resolve: (e: LogEntry) => void }> = [];
  const log = createLogger({
    level: 'debug',
    destination: {
      write(line: string) {
        const e = JSON.parse(line) as LogEntry;
        logs.push(e);
        for (const w of waiters.filter((w) => w.pred(e))) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(e);
        }
      },
    },
  });
  const broker = await createBroker(
    {
      root: ROOT,
      listen: '127.0.0.1:0',
      dataDir: dir,
      allowAnonymous: true,
      ws: '127.0.0.1:0',
      ...o,
      // TCP and WebSocket controllers always log in: every test broker knows the test admin.
      users: [
        { username: TEST_ADMIN.username, passwordHash: TEST_ADMIN.passwordHash },
        ...(o.users ?? []),
      ],
    },
    log,
  ).catch((err: unknown) => {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  return {
    broker,
    dir,
    logs,
    waitForLog(pred, timeoutMs = TIMEOUT) {
      const hit = logs.find(pred);
      if (hit) return Promise.resolve(hit);
      return withTimeout(
        new Promise<LogEntry>((resolve) => waiters.push({ pred, resolve })),
        'log entry',
        timeoutMs,
      );
    },
    tcpPort: () => portOf(broker.addresses.tcp),
    guestPort: () => portOf(broker.addresses.guest),
    async close() {
      await broker.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const base: IClientOptions = { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: TIMEOUT };

/**
 * Connect with mqtt.js; rejects with the CONNACK error (err.code = return code).
 * Over TCP and WebSocket the client logs in as the test admin unless `o` says
 * `username` itself (pass `username: undefined` to try anonymously).
 */
export function connectClient(url: string, o: IClientOptions = {}): Promise<MqttClient> {
  const login =
    'username' in o || o.unixSocket === true || /^(unix|mqtt\+unix):/.test(url)
      ? {}
      : { username: TEST_ADMIN.username, password: TEST_ADMIN.password };
  const client = mqtt.connect(url, { ...base, ...login, ...o });
  return settle(client);
}

/** mqtt.js over an existing stream (agent channels). */
export function connectOverStream(stream: net.Socket, o: IClientOptions = {}): Promise<MqttClient> {
  const client = new mqtt.MqttClient(() => stream, { ...base, ...o });
  return settle(client);
}

function settle(client: MqttClient): Promise<MqttClient> {
  return withTimeout(
    new Promise<MqttClient>((resolve, reject) => {
      client.once('connect', () => resolve(client));
      client.once('error', (err) => {
        client.end(true);
        reject(err);
      });
      client.once('close', () => reject(new Error('closed before CONNACK')));
    }),
    'mqtt connect',
  );
}

/** Resolves when the client's connection closes. */
export function closedOf(client: MqttClient): Promise<void> {
  if (!client.connected && client.disconnected) return Promise.resolve();
  return withTimeout(
    new Promise<void>((resolve) => client.once('close', () => resolve())),
    'client close',
  );
}

/** Collects every message a client receives; `wait(topic)` awaits one. */
export function inbox(client: MqttClient) {
  const got: Array<{ topic: string; payload: string; retain: boolean }> = [];
  const waiters: Array<{ topic: string; resolve: (p: string) => void }> = [];
  client.on('message', (topic, payload, packet) => {
    got.push({ topic, payload: payload.toString(), retain: packet.retain });
    for (const w of waiters.filter((w) => w.topic === topic)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(payload.toString());
    }
  });
  return {
    got,
    topics: () => got.map((g) => g.topic),
    wait(topic: string): Promise<string> {
      const hit = got.find((g) => g.topic === topic);
      if (hit) return Promise.resolve(hit.payload);
      return withTimeout(
        new Promise<string>((resolve) => waiters.push({ topic, resolve })),
        `message on ${topic}`,
      );
    },
  };
}

/**
 * A connected pair of unix sockets (a real byte stream like a virtio-serial
 * chardev socket): `host` goes to attachAgentChannel, `guest` to the client.
 */
export async function socketPair(dir: string): Promise<{ host: net.Socket; guest: net.Socket }> {
  const p = path.join(dir, `pair-${Math.random().toString(36).slice(2)}.sock`);
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(p, resolve));
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const guest = net.connect(p);
  await once(guest, 'connect');
  const [host] = await accepted;
  server.close();
  return { host, guest };
}

/** Daemon-side subscription that records what it sees. */
export async function daemonInbox(broker: Broker, filter: string) {
  const got: Array<{ topic: string; payload: string }> = [];
  const waiters: Array<{ topic: string; resolve: () => void }> = [];
  const unsubscribe = await broker.subscribe(filter, (topic, payload) => {
    got.push({ topic, payload: payload.toString() });
    for (const w of waiters.filter((w) => w.topic === topic)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  });
  return {
    got,
    unsubscribe,
    wait(topic: string): Promise<void> {
      if (got.some((g) => g.topic === topic)) return Promise.resolve();
      return withTimeout(
        new Promise<void>((resolve) => waiters.push({ topic, resolve })),
        `daemon message on ${topic}`,
      );
    },
  };
}
