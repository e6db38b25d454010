/**
 * Daemon test harness: an in-process mvirtd on an ephemeral port in a temp
 * data dir with a placeholder image, and a raw RPC client (JSON or CBOR) that
 * talks to it over a real MQTT connection.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { startDaemon, type Daemon } from '../../host/daemon/daemon.js';
import { parseOptions } from '../../host/daemon/options.js';
import { NO_HOST_NETWORK } from './daemon-process.js';
import { adminLogin, writeAdminUsers } from './test-admin.js';
import type { Hypervisor } from '../../host/hypervisors/types.js';
import { createLogger, silentLogger, type MvirtLogger } from '../../host/log.js';
import { brokerOptions } from '../../protocol/client.js';
import { decode, encode, type Encoding } from '../../protocol/codec.js';
import type { ReplyEnvelope } from '../../protocol/rpc.js';

export const HOST_ID = 'test-host';

export async function makeTempDir(prefix = 'mvirt-daemon-'): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}

/** A placeholder image (a valid manifest + empty files): enough for the fake backend. */
export async function writeFakeImage(imagesDir: string, name = 'default'): Promise<void> {
  const dir = path.join(imagesDir, name);
  await mkdir(dir, { recursive: true });
  for (const f of ['vmlinuz', 'initrd.img', 'rootfs.squashfs'])
    await writeFile(path.join(dir, f), '');
  const sha = '0'.repeat(64);
  const manifest = {
    schema: 1,
    name,
    key: sha,
    kernel: { file: 'vmlinuz', release: 'fake', source: 'debian' },
    initrd: { file: 'initrd.img', compression: 'lz4' },
    disk: {
      file: 'rootfs.squashfs',
      format: 'squashfs',
      compression: 'zstd',
      readOnly: true,
      bus: 'virtio-blk',
    },
    cmdline: 'console=ttyS0',
    boot: {
      machine: 'pc',
      transport: 'virtio-pci',
      serialConsole: 'ttyS0',
      agentPort: 'mvirt.agent',
      minMemoryMiB: 64,
      testedAccel: ['tcg'],
    },
    inputs: [],
    outputs: [],
    sizes: { kernelPlusInitrd: 0, total: 0 },
    modules: [],
    build: {
      at: new Date(0).toISOString(),
      seconds: 0,
      fromCache: false,
      sourceDateEpoch: 0,
      builderVersion: 1,
    },
    warnings: [],
  };
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
}

export function testLogger(): MvirtLogger {
  return process.env.MVIRT_TEST_LOG
    ? createLogger({ level: process.env.MVIRT_TEST_LOG })
    : silentLogger();
}

export interface TestDaemon {
  daemon: Daemon;
  dataDir: string;
  url: string;
  root: string;
  /** Stop the daemon (VMs keep running unless stopVms). */
  stop(): Promise<void>;
}

export async function startTestDaemon(opts: {
  dataDir?: string;
  hypervisors?: Hypervisor[];
  args?: string[];
  log?: MvirtLogger;
}): Promise<TestDaemon> {
  const dataDir = opts.dataDir ?? (await makeTempDir());
  await writeFakeImage(path.join(dataDir, 'images'));
  // TCP, WebSocket and HTTP controllers always log in: the test admin, unless
  // the test brings its own users; anonymous stays on for the unix socket.
  const login = (opts.args ?? []).includes('--users')
    ? []
    : ['--users', writeAdminUsers(dataDir), '--allow-anonymous'];
  const options = parseOptions([
    '--data-dir',
    dataDir,
    '--listen',
    '127.0.0.1:0',
    '--host-id',
    HOST_ID,
    ...NO_HOST_NETWORK,
    // Any free port: tests run side by side (a later --http in args wins).
    '--http',
    '127.0.0.1:0',
    ...login,
    ...(opts.args ?? []),
  ]);
  const daemon = await startDaemon(options, opts.log ?? testLogger(), {
    ...(opts.hypervisors ? { hypervisors: opts.hypervisors } : {}),
  });
  return {
    daemon,
    dataDir,
    // The unix socket (anonymous, as the local user); TCP needs the test admin's login.
    url: daemon.broker.addresses.unix
      ? `unix://${daemon.broker.addresses.unix}`
      : `mqtt://${daemon.broker.addresses.tcp!}`,
    root: daemon.topics.root,
    stop: () => daemon.close(),
  };
}

export interface RpcClient {
  mqtt: mqtt.MqttClient;
  replyTopic: string;
  call<R = unknown>(
    method: string,
    params?: unknown,
    opts?: { encoding?: Encoding; timeoutMs?: number },
  ): Promise<ReplyEnvelope<R>>;
  /** Publish raw bytes to a topic and await the reply with `id` (or time out). */
  raw<R = unknown>(
    topic: string,
    payload: Buffer | string,
    id?: string,
    timeoutMs?: number,
  ): Promise<ReplyEnvelope<R>>;
  /** Resolve with the first message on `filter` that satisfies `pred`. */
  waitFor(
    filter: string,
    pred: (topic: string, payload: Buffer) => boolean,
    timeoutMs?: number,
  ): Promise<Buffer>;
  /**
   * Like waitFor, but resolves once subscribed (SUBACK): anything published
   * after this returns is seen by `message`.
   */
  watch(
    filter: string,
    pred: (topic: string, payload: Buffer) => boolean,
    timeoutMs?: number,
  ): Promise<{ message: Promise<Buffer> }>;
  close(): Promise<void>;
}

let seq = 0;

export async function rpcClient(url: string, root: string): Promise<RpcClient> {
  const clientId = `test-${process.pid}-${++seq}`;
  // brokerOptions: `unix://` URLs (a daemon in a network namespace) become unix-socket options.
  const b = brokerOptions(url);
  // Over TCP/WebSocket controllers log in: as the test admin.
  const login = b.url ? adminLogin() : {};
  const opts = { ...b.opts, ...login, clientId, protocolVersion: 4 as const, reconnectPeriod: 0 };
  const client = await (b.url ? mqtt.connectAsync(b.url, opts) : mqtt.connectAsync(opts));
  const replyTopic = `test/replies/${clientId}`;
  const waiting = new Map<string, (r: ReplyEnvelope) => void>();
  const watchers = new Set<(topic: string, payload: Buffer) => void>();
  client.on('message', (topic, payload) => {
    if (topic === replyTopic) {
      const r = decode(payload) as ReplyEnvelope;
      const w = r.id !== undefined ? waiting.get(r.id) : undefined;
      if (w && r.id !== undefined) {
        waiting.delete(r.id);
        w(r);
      }
    }
    for (const w of watchers) w(topic, payload);
  });
  await client.subscribeAsync(replyTopic, { qos: 1 });

  function awaitReply<R>(id: string, timeoutMs: number, what: string): Promise<ReplyEnvelope<R>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`no reply to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      waiting.set(id, (r) => {
        clearTimeout(t);
        resolve(r as ReplyEnvelope<R>);
      });
    });
  }

  return {
    mqtt: client,
    replyTopic,
    call(method, params, opts = {}) {
      const id = `r-${++seq}`;
      const body: Record<string, unknown> = { id, replyTo: replyTopic };
      if (params !== undefined) body.params = params;
      const p = awaitReply(id, opts.timeoutMs ?? 10_000, method);
      // A lost connection shows as a missing reply (timeout), not an unhandled rejection.
      client
        .publishAsync(`${root}/rpc/${method}`, encode(body, opts.encoding ?? 'json'), { qos: 1 })
        .catch(() => undefined);
      return p as never;
    },
    raw(topic, payload, id = 'raw', timeoutMs = 5000) {
      const p = awaitReply(id, timeoutMs, topic);
      client.publishAsync(topic, payload, { qos: 1 }).catch(() => undefined);
      return p as never;
    },
    async waitFor(filter, pred, timeoutMs = 10_000) {
      return (await watch(filter, pred, timeoutMs)).message;
    },
    watch,
    close: () => client.endAsync(),
  };

  async function watch(
    filter: string,
    pred: (topic: string, payload: Buffer) => boolean,
    timeoutMs = 10_000,
  ): Promise<{ message: Promise<Buffer> }> {
    {
      // Watch before subscribing: retained messages follow the SUBACK at once.
      const got = new Promise<Buffer>((resolve, reject) => {
        const w = (topic: string, payload: Buffer): void => {
          if (matches(filter, topic) && pred(topic, payload)) {
            watchers.delete(w);
            clearTimeout(t);
            resolve(payload);
          }
        };
        const t = setTimeout(() => {
          watchers.delete(w);
          reject(new Error(`nothing matching on ${filter} within ${timeoutMs} ms`));
        }, timeoutMs);
        watchers.add(w);
      });
      await client.subscribeAsync(filter, { qos: 1 });
      return { message: got };
    }
  }
}

/** MQTT filter matching (+ and #). */
export function matches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
