/**
 * A typed MQTT client of the public API (docs/protocol.md) for any TypeScript
 * controller: the `mvirt` CLI uses it, and so can a dashboard or a script.
 *
 *   const c = await createClient({ url: 'mqtt://127.0.0.1:1883' });
 *   const vm = await c.call('vm.create', { name: 'web-1' });
 *   const stop = await c.watchVm(vm.id, (rec) => console.log(rec?.state));
 *
 * Replies come back on one topic per client, `<prefix>/_clients/<clientId>/replies`:
 * outside every `<prefix>/<host>/` subtree (controllers may only publish rpc
 * there), and `_` cannot start a host id (NAME_RE) so it never collides with one.
 */
import type { MqttClient } from 'mqtt';
import { encode, type Encoding } from './client-codec.js';
import { MvirtError, fromErrorBody, isErrorCode, type ErrorBody } from './errors.js';
import type { z } from 'zod';
import { EventRecord, HostStatus, VmEvent, VmRecord } from './records.js';
import { PortForwardNotice, portNoticeTopic } from './ports.js';
import {
  DryRunPlan,
  PARAMS,
  RESULTS,
  type MutatingMethod,
  type ParamsOf,
  type ResultOf,
  type RpcMethod,
} from './rpc.js';
import {
  DEFAULT_PREFIX,
  hostRoot,
  replyTopicFor,
  topicMatches,
  topics,
  type Topics,
} from './topics.js';

// Browser-safe helpers, re-exported where callers have always found them.
export { replyTopicFor, topicMatches };
import { parseWith } from './validate.js';
import { DEFAULT_BROKER_URL, DEFAULT_TIMEOUT_MS } from './limits.js';
import {
  asRecord,
  connectBroker,
  findHost,
  noReplyHint,
  randomClientId,
  tryDecode,
} from './connect.js';
export {
  brokerOptions,
  connectBroker,
  discoverHosts,
  findHost,
  pickHost,
  randomClientId,
} from './connect.js';

export { DEFAULT_BROKER_URL, DEFAULT_TIMEOUT_MS };

export interface ClientOptions {
  /** `mqtt://`, `mqtts://`, `ws://`, `wss://`, `unix:///path` or a unix socket path. */
  url?: string;
  /** An already connected MQTT.js client; the caller keeps owning it (close() leaves it open). */
  mqtt?: MqttClient;
  /**
   * A connection to `url` already under way (connect.ts openBroker) with
   * `clientId`: the client owns it, as one it made itself.
   */
  connecting?: Promise<MqttClient>;
  /** The daemon's host id; discovered from the retained `<prefix>/+/status` when omitted. */
  hostId?: string;
  prefix?: string;
  /** Request encoding; replies come back in the same one. Default json. */
  encoding?: Encoding;
  username?: string;
  password?: string;
  /** CA certificate(s) to trust for mqtts:// and wss:// (PEM). */
  ca?: string | Buffer;
  /** Default time to wait for a reply, per call. */
  timeoutMs?: number;
  connectTimeoutMs?: number;
  /** MQTT client id; a random `mvirt-<hex>` by default. */
  clientId?: string;
  /** MQTT.js's writeCache (connect.ts connectBroker): false for a client that sends a few packets and ends. */
  writeCache?: boolean;
  /** Longest wait for retained host statuses during discovery. */
  discoveryTimeoutMs?: number;
  /**
   * Validate against the protocol schemas (default true): params before
   * sending, and every reply and watched record on receipt (a malformed one is
   * an INVALID_RECORD error). Costs 1.4–2.4 times the decoding; see the
   * measurement at `checked` below.
   */
  validate?: boolean;
}

export interface CallOptions {
  timeoutMs?: number;
}

export type Unsubscribe = () => Promise<void>;
/** A watched record that does not match its schema (INVALID_RECORD); the watch goes on. */
export type InvalidHandler = (err: MvirtError) => void;
export type RawHandler = (topic: string, payload: Buffer, retained: boolean) => void;

type CallArgs<M extends RpcMethod> =
  undefined extends ParamsOf<M>
    ? [params?: ParamsOf<M>, opts?: CallOptions]
    : [params: ParamsOf<M>, opts?: CallOptions];

export interface MvirtClient {
  readonly hostId: string;
  readonly prefix: string;
  /** `<prefix>/<hostId>` */
  readonly root: string;
  readonly topics: Topics;
  readonly clientId: string;
  readonly replyTopic: string;
  readonly encoding: Encoding;
  readonly mqtt: MqttClient;
  /**
   * Call an RPC method; rejects with an MvirtError carrying the daemon's code,
   * or INVALID_RECORD when the result does not match the method's schema.
   */
  call<M extends RpcMethod>(method: M, ...args: CallArgs<M>): Promise<ResultOf<M>>;
  /**
   * A dry run of a state-changing method: its plan (the same checks, the
   * steps, commands and files it would run and touch), nothing changed. A
   * call the method would refuse rejects with the same error.
   */
  plan<M extends MutatingMethod>(
    method: M,
    params: ParamsOf<M>,
    opts?: CallOptions,
  ): Promise<DryRunPlan>;
  /** Call a method this library does not know (a newer daemon's); no validation. */
  callRaw(method: string, params?: unknown, opts?: CallOptions): Promise<unknown>;
  /** Retained VM state by VM id: the current record at once, then every change; null on delete. */
  /**
   * The watchers validate each record; one that does not match its schema is
   * not passed to `cb` but to `onInvalid` (an INVALID_RECORD error), and the
   * watch goes on.
   */
  watchVm(
    vmId: string,
    cb: (vm: VmRecord | null) => void,
    onInvalid?: InvalidHandler,
  ): Promise<Unsubscribe>;
  /** Live lifecycle events of one VM (`vm/<id>/events`). */
  watchVmEvents(
    vmId: string,
    cb: (ev: VmEvent) => void,
    onInvalid?: InvalidHandler,
  ): Promise<Unsubscribe>;
  /** The host's live event log (`<root>/events`), the same records `events.query` returns. */
  watchEvents(cb: (ev: EventRecord) => void, onInvalid?: InvalidHandler): Promise<Unsubscribe>;
  /** Retained host status (`<root>/status`), including the daemon's offline last will. */
  watchStatus(cb: (s: HostStatus) => void, onInvalid?: InvalidHandler): Promise<Unsubscribe>;
  /**
   * The connections of a port forward this client opened (port.forward), as
   * they open and close; `conn` 0 with `close`: the forward itself closed.
   * The forward lives as long as this client's connection (or port.close).
   */
  watchPortForward(
    forwardId: string,
    cb: (n: PortForwardNotice) => void,
    onInvalid?: InvalidHandler,
  ): Promise<Unsubscribe>;
  /** Any topic filter, payload untouched (console bytes, telemetry, …). */
  subscribe(filter: string, cb: RawHandler): Promise<Unsubscribe>;
  publish(topic: string, payload: Buffer | string, opts?: { qos?: 0 | 1 }): Promise<void>;
  close(): Promise<void>;
}

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout;
}

export async function createClient(options: ClientOptions = {}): Promise<MvirtClient> {
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  const encoding = options.encoding ?? 'json';
  const url = options.url ?? DEFAULT_BROKER_URL;
  const defaultTimeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const validate = options.validate !== false;
  const ownsMqtt = options.mqtt === undefined;
  const clientId = options.mqtt?.options.clientId ?? options.clientId ?? randomClientId();
  const mqtt =
    options.mqtt ??
    (await (options.connecting ??
      connectBroker(url, {
        clientId,
        ...(options.username !== undefined ? { username: options.username } : {}),
        ...(options.password !== undefined ? { password: options.password } : {}),
        ...(options.ca !== undefined ? { ca: options.ca } : {}),
        ...(options.connectTimeoutMs !== undefined
          ? { connectTimeoutMs: options.connectTimeoutMs }
          : {}),
        ...(options.writeCache !== undefined ? { writeCache: options.writeCache } : {}),
      })));
  const where = ownsMqtt ? url : 'the given MQTT connection';
  const replyTopic = replyTopicFor(prefix, clientId);
  const pending = new Map<string, Pending>();
  const handlers = new Map<string, Set<RawHandler>>();
  let seq = 0;
  let closed = false;

  const onMessage = (topic: string, payload: Buffer, packet: { retain?: boolean }): void => {
    if (topic === replyTopic) {
      onReply(payload);
      return;
    }
    for (const [filter, set] of handlers) {
      if (!topicMatches(filter, topic)) continue;
      for (const h of set) {
        try {
          h(topic, payload, packet.retain === true);
        } catch {
          // One watcher's bug must not break the dispatch to the others.
        }
      }
    }
  };

  function onReply(payload: Buffer): void {
    const r = asRecord(tryDecode(payload));
    if (!r || typeof r.id !== 'string') return;
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    clearTimeout(p.timer);
    if (r.ok === true) p.resolve(r.result ?? {});
    else {
      const e = asRecord(r.error);
      p.reject(
        e && typeof e.message === 'string'
          ? fromErrorBody({
              code: isErrorCode(e.code) ? e.code : 'INTERNAL',
              message:
                isErrorCode(e.code) || e.code === undefined
                  ? e.message
                  : `${String(e.code)}: ${e.message}`,
              ...(e.details !== undefined ? { details: e.details } : {}),
            } as ErrorBody)
          : new MvirtError('INTERNAL', `malformed error reply to ${p.method}`),
      );
    }
  }

  const onClose = (): void => {
    if (!ownsMqtt) return; // the owner may reconnect; pending calls then rely on their timeout
    failAll(new MvirtError('CONNECTION_FAILED', `lost the connection to ${where}`));
  };

  function failAll(err: MvirtError): void {
    for (const [id, p] of pending) {
      clearTimeout(p.timer);
      pending.delete(id);
      p.reject(err);
    }
  }

  mqtt.on('message', onMessage);
  mqtt.on('close', onClose);
  if (ownsMqtt) mqtt.on('error', () => {}); // surfaced through 'close' and pending calls

  async function cleanup(): Promise<void> {
    mqtt.removeListener('message', onMessage);
    mqtt.removeListener('close', onClose);
    if (ownsMqtt) await mqtt.endAsync().catch(() => {});
  }

  let hostId: string;
  try {
    // Subscribe before the first publish so no reply can be missed; without a
    // host id, in the same SUBSCRIBE as discovery's (one round trip).
    if (options.hostId !== undefined) {
      await mqtt.subscribeAsync(replyTopic, { qos: 1 });
      hostId = options.hostId;
    } else
      hostId = await findHost(mqtt, prefix, where, {
        also: { [replyTopic]: { qos: 1 } },
        ...(options.discoveryTimeoutMs !== undefined
          ? { timeoutMs: options.discoveryTimeoutMs }
          : {}),
      });
  } catch (err) {
    await cleanup();
    if (err instanceof MvirtError) throw err;
    throw new MvirtError(
      'CONNECTION_FAILED',
      `cannot set up the client at ${where}: ${String(err)}`,
      {
        cause: err,
      },
    );
  }
  const root = hostRoot(prefix, hostId);
  const t = topics(root);

  function callRaw(method: string, params?: unknown, opts: CallOptions = {}): Promise<unknown> {
    if (closed) return Promise.reject(new MvirtError('CONNECTION_FAILED', 'the client is closed'));
    const id = `${clientId}-${++seq}`;
    const timeoutMs = opts.timeoutMs ?? defaultTimeout;
    const body =
      params === undefined ? { id, replyTo: replyTopic } : { id, replyTo: replyTopic, params };
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(
          new MvirtError(
            'TIMEOUT',
            `no reply to ${method} from host '${hostId}' within ${Math.round(timeoutMs / 100) / 10} s: ${noReplyHint(prefix, hostId)}`,
            { details: { method, timeoutMs, noReply: true } },
          ),
        );
      }, timeoutMs);
      pending.set(id, { method, resolve, reject, timer });
      mqtt.publish(t.rpc(method), encode(body, encoding), { qos: 1 }, (err) => {
        if (!err) return;
        clearTimeout(timer);
        pending.delete(id);
        reject(
          new MvirtError(
            'CONNECTION_FAILED',
            `cannot publish ${method} to ${where}: ${err.message}`,
            {
              cause: err,
            },
          ),
        );
      });
    });
  }

  async function call<M extends RpcMethod>(method: M, ...args: CallArgs<M>): Promise<ResultOf<M>> {
    const [params, opts] = args;
    if (validate) parseWith(PARAMS[method], params, 'INVALID_PARAMS', `${method} params`);
    if ((params as { dryRun?: unknown } | undefined)?.dryRun === true)
      throw new MvirtError(
        'INVALID_PARAMS',
        `a dry run answers with a plan: use plan('${method}')`,
      );
    const result = await callRaw(method, params, opts);
    return checked(RESULTS[method], result, `${method} reply`) as ResultOf<M>;
  }

  async function plan<M extends MutatingMethod>(
    method: M,
    params: ParamsOf<M>,
    opts?: CallOptions,
  ): Promise<DryRunPlan> {
    const p = { ...params, dryRun: true };
    if (validate) parseWith(PARAMS[method], p, 'INVALID_PARAMS', `${method} params`);
    return checked(DryRunPlan, await callRaw(method, p, opts), `${method} plan`);
  }

  async function subscribe(filter: string, cb: RawHandler): Promise<Unsubscribe> {
    let set = handlers.get(filter);
    if (!set) handlers.set(filter, (set = new Set()));
    set.add(cb);
    // Always (re)subscribe: the broker then re-sends retained messages, so a
    // second watcher of the same topic also gets the current value.
    try {
      await mqtt.subscribeAsync(filter, { qos: 1 });
    } catch (err) {
      set.delete(cb);
      throw new MvirtError('CONNECTION_FAILED', `cannot subscribe to ${filter}: ${String(err)}`, {
        cause: err,
      });
    }
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      set.delete(cb);
      if (set.size === 0 && handlers.get(filter) === set) {
        handlers.delete(filter);
        if (!closed && mqtt.connected) await mqtt.unsubscribeAsync(filter).catch(() => {});
      }
    };
  }

  /**
   * A received record, validated unless the caller opted out. Measured with
   * bench/records.ts on the 2-core CI machine under load (load average 14):
   * one VM record 9 µs to JSON.parse, 20 µs with the schema; a 40-VM vm.list
   * reply 0.30 ms, 0.73 ms with it; a job record 7 µs, 10.5 µs. Validation
   * costs 1.4–2.4 decodes, beside a call's broker round trip (bench/broker.ts).
   */
  function checked<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
    return validate ? parseWith(schema, value, 'INVALID_RECORD', what) : (value as z.output<S>);
  }

  /** A watch callback for one record schema; an empty payload is `null` where allowed (deletes). */
  function decoded<S extends z.ZodType>(
    schema: S,
    cb: (v: z.output<S>) => void,
    onInvalid: InvalidHandler | undefined,
    allowEmpty = false,
  ): RawHandler {
    return (topic, payload) => {
      if (payload.length === 0) {
        if (allowEmpty) cb(null as z.output<S>);
        return;
      }
      let rec: z.output<S>;
      try {
        const v = tryDecode(payload);
        if (v === null) throw new MvirtError('INVALID_RECORD', `undecodable payload on ${topic}`);
        rec = checked(schema, v, `record on ${topic}`);
      } catch (err) {
        onInvalid?.(err as MvirtError);
        return;
      }
      cb(rec);
    };
  }

  return {
    hostId,
    prefix,
    root,
    topics: t,
    clientId,
    replyTopic,
    encoding,
    mqtt,
    call,
    plan,
    callRaw,
    watchVm: (vmId, cb, onInvalid) =>
      subscribe(t.vmState(vmId), decoded(VmRecord, cb, onInvalid, true)),
    watchVmEvents: (vmId, cb, onInvalid) =>
      subscribe(t.vmEvents(vmId), decoded(VmEvent, cb, onInvalid)),
    watchEvents: (cb, onInvalid) => subscribe(t.events, decoded(EventRecord, cb, onInvalid)),
    watchStatus: (cb, onInvalid) => subscribe(t.status, decoded(HostStatus, cb, onInvalid)),
    watchPortForward: (forwardId, cb, onInvalid) =>
      subscribe(portNoticeTopic(replyTopic, forwardId), decoded(PortForwardNotice, cb, onInvalid)),
    subscribe,
    publish: async (topic, payload, opts = {}) => {
      try {
        await mqtt.publishAsync(topic, payload, { qos: opts.qos ?? 0 });
      } catch (err) {
        throw new MvirtError('CONNECTION_FAILED', `cannot publish to ${topic}: ${String(err)}`, {
          cause: err,
        });
      }
    },
    close: async () => {
      if (closed) return;
      closed = true;
      failAll(new MvirtError('CONNECTION_FAILED', 'the client was closed'));
      if (!ownsMqtt) {
        await mqtt.unsubscribeAsync([replyTopic, ...handlers.keys()]).catch(() => {});
      }
      handlers.clear();
      await cleanup();
    },
  };
}
