/**
 * The typed test client: RPC calls over a real MQTT connection to mvirtd, in
 * JSON or CBOR, whose replies are typed by method through the protocol's
 * `ResultOf<M>` (no casts in tests), plus a recorder of everything the daemon
 * publishes on job, VM and pool topics, so a test awaits what the daemon
 * published (past or future) instead of sleeping. Connections are made in
 * connect.ts.
 */
import { createConditions } from './conditions.js';
import assert from 'node:assert/strict';
import type { IClientOptions, MqttClient } from 'mqtt';
import { decode, encode, type Encoding } from '../protocol/codec.js';
import type {
  JobRecord,
  JobState,
  OutputChunk,
  ParamsOf,
  PoolRecord,
  ReplyEnvelope,
  ResultOf,
  RpcMethod,
  VmRecord,
} from '../protocol/rpc.js';
import { TERMINAL_JOB_STATES } from '../protocol/states.js';
import { connectController, nextClientId, type DaemonAddress } from './connect.js';

export const WAIT_MS = 15_000;
export const TERMINAL = TERMINAL_JOB_STATES;

export interface CallOpts {
  encoding?: Encoding;
  timeoutMs?: number;
}

export interface RpcClient {
  mqtt: MqttClient;
  replyTopic: string;
  /** Call `method`; the reply's result is typed by the method. */
  call<M extends RpcMethod>(
    method: M,
    params?: ParamsOf<M>,
    opts?: CallOpts,
  ): Promise<ReplyEnvelope<ResultOf<M>>>;
  /** Call anything (an unknown method, params the schema rejects): for error-path tests. */
  send(method: string, params?: unknown, opts?: CallOpts): Promise<ReplyEnvelope>;
  /** Publish raw bytes to a topic and await the reply with `id` (or time out). */
  raw(
    topic: string,
    payload: Buffer | string,
    id?: string,
    timeoutMs?: number,
  ): Promise<ReplyEnvelope>;
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

/** `extra`: connection options over the defaults (another broker's user, say). */
export async function rpcClient(d: DaemonAddress, extra?: IClientOptions): Promise<RpcClient> {
  const clientId = nextClientId();
  const client = await connectController(d.url, { clientId, ...(extra ? { extra } : {}) });
  // The client's own reply namespace (docs/protocol.md): the only place mvirtd replies to.
  const replyTopic = `${d.root.slice(0, d.root.lastIndexOf('/'))}/_clients/${clientId}/replies`;
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

  function awaitReply(id: string, timeoutMs: number, what: string): Promise<ReplyEnvelope> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`no reply to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      waiting.set(id, (r) => {
        clearTimeout(t);
        resolve(r);
      });
    });
  }

  function send(method: string, params?: unknown, opts: CallOpts = {}): Promise<ReplyEnvelope> {
    const id = `r-${++seq}`;
    const body: Record<string, unknown> = { id, replyTo: replyTopic };
    if (params !== undefined) body.params = params;
    const p = awaitReply(id, opts.timeoutMs ?? 10_000, method);
    // A lost connection shows as a missing reply (timeout), not an unhandled rejection.
    client
      .publishAsync(`${d.root}/rpc/${method}`, encode(body, opts.encoding ?? 'json'), { qos: 1 })
      .catch(() => undefined);
    return p;
  }

  async function watch(
    filter: string,
    pred: (topic: string, payload: Buffer) => boolean,
    timeoutMs = 10_000,
  ): Promise<{ message: Promise<Buffer> }> {
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

  return {
    mqtt: client,
    replyTopic,
    // The daemon replies with ResultOf<M> for method M (host/api/types.ts types every handler so).
    call: (method, params, opts) => send(method, params, opts) as never,
    send,
    raw(topic, payload, id = 'raw', timeoutMs = 5000) {
      const p = awaitReply(id, timeoutMs, topic);
      client.publishAsync(topic, payload, { qos: 1 }).catch(() => undefined);
      return p;
    },
    async waitFor(filter, pred, timeoutMs = 10_000) {
      return (await watch(filter, pred, timeoutMs)).message;
    },
    watch,
    close: () => client.endAsync(),
  };
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

/** The result of a successful reply (fails the test with the error otherwise). */
export function result<R>(r: ReplyEnvelope<R>): R {
  if (!r.ok) assert.fail(`${r.error.code}: ${r.error.message}`);
  return r.result;
}

/** The error of a failed reply (fails the test on success). */
export function errorOf(r: ReplyEnvelope): { code: string; message: string; details?: unknown } {
  assert.equal(r.ok, false, `expected an error, got ${JSON.stringify(r)}`);
  return r.ok ? { code: '', message: '' } : r.error;
}

interface Seen {
  topic: string;
  payload: Buffer;
}

/** Everything published on the job, VM and pool topics since the daemon started. */
export interface Recorder {
  readonly seen: Seen[];
  /** Job records published on P/<host>/job/<id>/state, oldest first. */
  jobStates(jobId: string): JobRecord[];
  /** Chunks published on P/<host>/job/<id>/output, in arrival order. */
  outputs(jobId: string): OutputChunk[];
  /** VM records on P/<host>/vm/<id>/state; null for the empty retained message of a delete. */
  vmStates(vmId: string): (VmRecord | null)[];
  /** Every VM state message, in arrival order. */
  allVmStates(): VmRecord[];
  /** The VMs that exist now, each as last published (a delete publishes an empty state). */
  liveVms(): VmRecord[];
  poolStates(name: string): (PoolRecord | null)[];
  /** Resolve with fn()'s value once it is not undefined (checked on every message). */
  until<T>(fn: () => T | undefined, what: string, timeoutMs?: number): Promise<T>;
  /** The job's first published record in one of `states`. */
  job(jobId: string, states: readonly JobState[], timeoutMs?: number): Promise<JobRecord>;
  close(): Promise<void>;
}

export async function record(d: DaemonAddress): Promise<Recorder> {
  const root = d.root;
  const client = await connectController(d.url, { clientId: nextClientId('rec') });
  const seen: Seen[] = [];
  const conditions = createConditions();
  client.on('message', (topic, payload) => {
    seen.push({ topic, payload: Buffer.from(payload) });
    conditions.notify();
  });
  await client.subscribeAsync(
    [`${root}/job/+/state`, `${root}/job/+/output`, `${root}/vm/+/state`, `${root}/pool/+/state`],
    { qos: 1 },
  );
  const on = (topic: string): Seen[] => seen.filter((s) => s.topic === topic);
  const json = <T>(s: Seen): T | null =>
    s.payload.length === 0 ? null : (JSON.parse(s.payload.toString()) as T);

  const rec: Recorder = {
    seen,
    jobStates: (id) => on(`${root}/job/${id}/state`).map((s) => json<JobRecord>(s)!),
    outputs: (id) => on(`${root}/job/${id}/output`).map((s) => json<OutputChunk>(s)!),
    vmStates: (id) => on(`${root}/vm/${id}/state`).map((s) => json<VmRecord>(s)),
    allVmStates: () =>
      seen
        .filter((s) => s.topic.startsWith(`${root}/vm/`) && s.payload.length > 0)
        .map((s) => json<VmRecord>(s)!),
    liveVms() {
      const latest = new Map<string, VmRecord | null>();
      for (const s of seen) {
        const t = s.topic.split('/');
        if (t.at(-1) === 'state' && t.at(-3) === 'vm') latest.set(t.at(-2)!, json<VmRecord>(s));
      }
      return [...latest.values()].filter((v): v is VmRecord => v !== null);
    },
    poolStates: (name) => on(`${root}/pool/${name}/state`).map((s) => json<PoolRecord>(s)),
    until<T>(fn: () => T | undefined, what: string, timeoutMs = WAIT_MS): Promise<T> {
      return conditions.until(fn, what, timeoutMs);
    },
    job(jobId, states, timeoutMs) {
      return rec.until(
        () => rec.jobStates(jobId).find((r) => states.includes(r.state)),
        `job ${jobId} ${states.join('|')} (seen: ${rec
          .jobStates(jobId)
          .map((r) => r.state)
          .join(',')})`,
        timeoutMs,
      );
    },
    close: () => client.endAsync(),
  };
  return rec;
}
