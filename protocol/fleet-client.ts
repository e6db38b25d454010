/**
 * The requester's side of fleet placement (protocol/fleet.ts, docs/fleet.md):
 * put a `job.run` or `vm.create` into the fleet queue, take the first claim
 * of an online host, send that host the request and return its reply.
 *
 *  - Exactly once: only the requester sends the request on, to one host at a
 *    time; a claim that comes late, twice or from a second broker of a
 *    bridged pair is ignored.
 *  - Never unanswered: a CAPACITY_EXCEEDED (another controller took the
 *    room) puts the request back into the queue for the others. If the
 *    chosen host's will (`online: false`) comes before its reply, the
 *    requester waits for the host to come back (HOST_BACK_MS) and asks it
 *    whether it took the request (ask()): the job or VM it made is the
 *    answer, else the request goes back into the queue. A host that stays
 *    away, or cannot say, is answered with CONNECTION_FAILED naming the
 *    host: it may have taken the request, so it is not placed again, never
 *    to run it twice. No reply within REPLY_TIMEOUT_MS: the host is asked
 *    the same way. Requests still in the queue
 *    are untouched: other hosts take them.
 *  - `job.run` is sent without `wait`: its reply says the host accepted the
 *    job (it is then that host's, and ends `lost` there if the host dies);
 *    follow it on `P/<host>/job/<id>/state`.
 */
import { randomBytes } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { decode, encode } from './codec.js';
import { fromErrorBody, MvirtError, type ErrorBody } from './errors.js';
import {
  FleetClaim,
  FleetRequest,
  fleetQueueFilter,
  fleetQueueTopic,
  parseFleetQueueTopic,
  type FleetMethod,
  type FleetNeed,
} from './fleet.js';
import type { HostStatus, ParamsOf, ResultOf } from './rpc.js';
import { replyTopicFor, topicMatches } from './topics.js';

export interface FleetPlaced<M extends FleetMethod> {
  hostId: string;
  result: ResultOf<M>;
  /** Milliseconds from queueing to the host's reply, to the claim taken, and how many hosts were tried. */
  ms: number;
  claimMs: number;
  attempts: number;
}

export type QueuedRequest = FleetRequest & { clientId: string };

export interface FleetRequester {
  request<M extends FleetMethod>(
    method: M,
    params: ParamsOf<M>,
    o?: {
      need?: FleetNeed;
      /** Give up (and leave the queue) after this; default 10 minutes. */
      timeoutMs?: number;
      /** Called once when no host claimed the request at once (it waits in the queue). */
      onQueued?: () => void;
    },
  ): Promise<FleetPlaced<M>>;
  /** Hosts known online from their retained status. */
  online(): string[];
  /** Every request waiting in the fleet queue now (every requester's), oldest first. */
  queue(o?: { quietMs?: number; timeoutMs?: number }): Promise<QueuedRequest[]>;
  close(): Promise<void>;
}

/** How long a chosen host that went offline before its reply may take to come back and be asked. */
const HOST_BACK_MS = 60_000;
/** A request nobody claimed within this is reported as queued (onQueued). */
const QUEUED_AFTER_MS = 250;
/**
 * The queue entry and the request to the chosen host go at QoS 0. Over a
 * Mosquitto bridge a QoS 1 message makes the far broker answer with a PUBACK
 * on the bridge's own socket, which has Nagle on (Mosquitto 2.0.11 sets
 * TCP_NODELAY only on sockets it accepts): the host's claim or reply that
 * follows it waited for this side's delayed ACK, ~40 ms. Measured (bench/fleet.ts):
 * queue → claim 43 ms at QoS 1, 6 ms at QoS 0. What QoS 0 risks: a bridge
 * that breaks at that moment loses it; the retained entry crosses again when
 * the bridge is back, and a request to the host lost there is found out
 * after REPLY_TIMEOUT_MS (ask(): the host took nothing, so it is queued again).
 */
const TOWARDS_HOSTS_QOS = 0;
/** How long the chosen host may take to answer before it is given up (as if offline). */
const REPLY_TIMEOUT_MS = 60_000;

type Answer = { ok: true; result: unknown } | { ok: false; error: ErrorBody | undefined };

interface Waiting {
  id: string;
  method: FleetMethod;
  params: Record<string, unknown>;
  need: FleetNeed | undefined;
  topic: string;
  at: string;
  expiresAt: string;
  exclude: string[];
  placing: { hostId: string; rpcId: string; sentAt: number } | null;
  /** The chosen host went offline before it answered: waiting for it to come back and say. */
  limbo: { timer: NodeJS.Timeout; asking: boolean } | null;
  attempts: number;
  /** performance.now() when the last claim was taken. */
  claimedAt: number;
  done: (err: Error | null, hostId?: string, result?: unknown) => void;
}

export async function createFleetRequester(o: {
  mqtt: MqttClient;
  prefix: string;
  clientId: string;
}): Promise<FleetRequester> {
  const { mqtt, prefix, clientId } = o;
  const base = `${replyTopicFor(prefix, clientId)}/fleet`;
  const claimTopic = `${base}/claim`;
  const replyTopic = `${base}/reply`;
  const statusFilter = `${prefix}/+/status`;
  const online = new Map<string, boolean>();
  const waiting = new Map<string, Waiting>();
  const byRpc = new Map<string, Waiting>();
  /** Replies awaited by ask(): by request id. */
  const checks = new Map<string, (answer: Answer) => void>();
  /** Jobs ask() found for a request: never given to a second one. */
  const taken = new Set<string>();
  let seq = 0;

  const publishEntry = (w: Waiting): void => {
    const entry = {
      id: w.id,
      method: w.method,
      params: w.params,
      ...(w.need ? { need: w.need } : {}),
      claimTo: claimTopic,
      at: w.at,
      expiresAt: w.expiresAt,
      ...(w.exclude.length > 0 ? { exclude: w.exclude } : {}),
    };
    const left = Math.max(1, Math.ceil((Date.parse(w.expiresAt) - Date.now()) / 1000));
    mqtt.publish(w.topic, JSON.stringify(entry), {
      qos: TOWARDS_HOSTS_QOS,
      retain: true,
      // MQTT 5 brokers drop it themselves once its requester would have given up.
      ...(mqtt.options.protocolVersion === 5
        ? { properties: { messageExpiryInterval: left } }
        : {}),
    });
  };
  const clearEntry = (w: Waiting): void => {
    mqtt.publish(w.topic, Buffer.alloc(0), { qos: 1, retain: true });
  };

  function requeue(w: Waiting, hostId: string): void {
    w.placing = null;
    w.limbo = null;
    if (!w.exclude.includes(hostId)) w.exclude.push(hostId);
    // Every online host failed it once: the races may be over, let them all try again.
    const up = [...online].filter(([, u]) => u).map(([h]) => h);
    if (up.length > 0 && up.every((h) => w.exclude.includes(h))) w.exclude = [];
    publishEntry(w);
  }

  function onClaim(payload: Buffer): void {
    let c: FleetClaim;
    try {
      const r = FleetClaim.safeParse(JSON.parse(payload.toString()));
      if (!r.success) return;
      c = r.data;
    } catch {
      return;
    }
    const w = waiting.get(c.request);
    if (!w || w.placing || w.exclude.includes(c.hostId)) return;
    if (online.get(c.hostId) === false) return;
    // Chosen: out of the queue (the others drop their reservations), on to the host.
    const rpcId = `${w.id}.${++seq}`;
    w.placing = { hostId: c.hostId, rpcId, sentAt: Date.now() };
    w.attempts++;
    w.claimedAt = performance.now();
    byRpc.set(rpcId, w);
    clearEntry(w);
    const params = w.method === 'job.run' ? { ...w.params, wait: false } : w.params;
    mqtt.publish(
      `${prefix}/${c.hostId}/rpc/${w.method}`,
      encode({ id: rpcId, replyTo: replyTopic, params }, 'json'),
      { qos: TOWARDS_HOSTS_QOS },
    );
    const t = setTimeout(() => {
      // No reply (a request or reply lost on a bridge): ask the host, as after its will.
      if (w.placing?.rpcId !== rpcId || w.limbo) return;
      offline(w);
      if (online.get(c.hostId) !== false) void ask(w);
    }, REPLY_TIMEOUT_MS);
    t.unref();
  }

  function onReply(payload: Buffer): void {
    let r: { id?: unknown; ok?: unknown; result?: unknown; error?: ErrorBody };
    try {
      r = decode(payload, 'json') as typeof r;
    } catch {
      return;
    }
    if (typeof r.id !== 'string') return;
    const check = checks.get(r.id);
    if (check) {
      checks.delete(r.id);
      return check(r.ok === true ? { ok: true, result: r.result } : { ok: false, error: r.error });
    }
    const w = byRpc.get(r.id);
    if (!w || !w.placing) return;
    byRpc.delete(r.id);
    const hostId = w.placing.hostId;
    if (r.ok === true) return w.done(null, hostId, r.result);
    const err = fromErrorBody(r.error ?? { code: 'INTERNAL', message: 'malformed error reply' });
    // Another controller took the room first: the others may have it.
    if (err.code === 'CAPACITY_EXCEEDED') return requeue(w, hostId);
    w.done(err, hostId);
  }

  function onStatus(topic: string, payload: Buffer): void {
    const hostId = topic.slice(prefix.length + 1, -'/status'.length);
    let s: HostStatus | null = null;
    try {
      s = payload.length > 0 ? (JSON.parse(payload.toString()) as HostStatus) : null;
    } catch {
      return;
    }
    const up = s?.online === true;
    online.set(hostId, up);
    for (const w of waiting.values()) {
      if (w.placing?.hostId !== hostId) continue;
      if (!up && !w.limbo) offline(w);
      else if (up && w.limbo && !w.limbo.asking) void ask(w);
    }
  }

  /**
   * The chosen host went offline before its reply (it died, or its link or
   * its broker did): its reply is gone with the connection. Wait for it to
   * come back and ask it whether it took the request; if not, the request
   * goes back into the queue. A host that stays away longer than
   * HOST_BACK_MS leaves the request unknown (CONNECTION_FAILED).
   */
  function offline(w: Waiting): void {
    byRpc.delete(w.placing!.rpcId);
    const timer = setTimeout(
      () => unknown(w, `went offline before it answered and stayed away ${HOST_BACK_MS / 1000} s`),
      HOST_BACK_MS,
    );
    timer.unref();
    w.limbo = { timer, asking: false };
  }

  /** Call a read method of a host; resolves with its answer (not ok: an error reply or none). */
  function call(hostId: string, method: string, params: unknown): Promise<Answer> {
    const id = `check.${++seq}`;
    return new Promise((resolve) => {
      checks.set(id, resolve);
      mqtt.publish(
        `${prefix}/${hostId}/rpc/${method}`,
        encode({ id, replyTo: replyTopic, params }, 'json'),
        { qos: 1 },
      );
      setTimeout(() => {
        if (checks.delete(id)) resolve({ ok: false, error: undefined });
      }, REPLY_TIMEOUT_MS).unref();
    });
  }

  /**
   * Did the host take the request before it went away? A vm.create made its
   * VM (by name); a job.run made a job with these argv since the request was
   * sent (the host's clock may differ: 5 s of slack), not already another
   * request's. Requests that differ only in env or stdin cannot be told apart
   * here; the first asked gets the job.
   */
  async function ask(w: Waiting): Promise<void> {
    w.limbo!.asking = true;
    const hostId = w.placing!.hostId;
    const since = w.placing!.sentAt - 5000;
    let found: unknown = null;
    let doubt: string | null = null;
    if (w.method === 'vm.create') {
      const a = await call(hostId, 'vm.get', { vm: w.params.name });
      if (a.ok) found = a.result;
      else if (a.error?.code !== 'VM_NOT_FOUND') doubt = 'cannot say whether it made the VM';
    } else {
      const a = await call(hostId, 'job.list', { limit: 1000 });
      const jobs = a.ok
        ? ((a.result as { jobs?: { jobId: string; argv: string[]; createdAt: string }[] }).jobs ??
          [])
        : null;
      if (jobs === null) doubt = 'cannot say whether it took the job';
      const argv = JSON.stringify(w.params.argv);
      found =
        jobs?.find(
          (j) =>
            JSON.stringify(j.argv) === argv &&
            Date.parse(j.createdAt) >= since &&
            !taken.has(`${hostId}/${j.jobId}`),
        ) ?? null;
      if (found) taken.add(`${hostId}/${(found as { jobId: string }).jobId}`);
    }
    if (!waiting.has(w.id) || !w.limbo) return;
    clearTimeout(w.limbo.timer);
    if (doubt !== null) return unknown(w, `lost its answer and ${doubt}`);
    w.limbo = null;
    if (found) return w.done(null, hostId, found);
    requeue(w, hostId);
  }

  /** The chosen host's answer will not come: say so, and what it may have done. */
  function unknown(w: Waiting, what: string): void {
    const hostId = w.placing!.hostId;
    byRpc.delete(w.placing!.rpcId);
    w.done(
      new MvirtError(
        'CONNECTION_FAILED',
        `fleet request ${w.id}: host ${hostId} ${what}; it may have accepted the ${w.method} (then it is that host's: mvirt --host ${hostId} job ls), so it is not placed again`,
        { details: { hostId, request: w.id } },
      ),
      hostId,
    );
  }

  const onMessage = (topic: string, payload: Buffer): void => {
    if (topic === claimTopic) onClaim(payload);
    else if (topic === replyTopic) onReply(payload);
    else if (topicMatches(statusFilter, topic)) onStatus(topic, payload);
  };
  mqtt.on('message', onMessage);
  await mqtt.subscribeAsync([claimTopic, replyTopic, statusFilter], { qos: 1 });

  return {
    online: () => [...online].filter(([, up]) => up).map(([h]) => h),
    request<M extends FleetMethod>(
      method: M,
      params: ParamsOf<M>,
      ro: { need?: FleetNeed; timeoutMs?: number; onQueued?: () => void } = {},
    ): Promise<FleetPlaced<M>> {
      const id = `f-${randomBytes(8).toString('hex')}`;
      const t0 = performance.now();
      const timeoutMs = ro.timeoutMs ?? 600_000;
      return new Promise<FleetPlaced<M>>((resolve, reject) => {
        const w: Waiting = {
          id,
          method,
          params: params as Record<string, unknown>,
          need: ro.need,
          topic: fleetQueueTopic(prefix, clientId, id),
          at: new Date().toISOString(),
          expiresAt: new Date(Date.now() + timeoutMs).toISOString(),
          exclude: [],
          placing: null,
          limbo: null,
          attempts: 0,
          claimedAt: 0,
          done: (err, hostId, result) => {
            clearTimeout(timer);
            clearTimeout(queuedTimer);
            if (w.limbo) clearTimeout(w.limbo.timer);
            waiting.delete(id);
            if (err) reject(err);
            else
              resolve({
                hostId: hostId!,
                result: result as ResultOf<M>,
                ms: performance.now() - t0,
                claimMs: w.claimedAt - t0,
                attempts: w.attempts,
              });
          },
        };
        const timer = setTimeout(() => {
          if (w.placing) return; // the host's reply or its will decides
          clearEntry(w);
          w.done(
            new MvirtError(
              'TIMEOUT',
              `no host of the fleet took ${method} within ${Math.round(timeoutMs / 1000)} s: none online had the room, labels, host or image asked for (see mvirt hosts and mvirt hosts --queue)`,
            ),
          );
        }, timeoutMs);
        timer.unref();
        const queuedTimer = setTimeout(() => {
          if (!w.placing) ro.onQueued?.();
        }, QUEUED_AFTER_MS);
        queuedTimer.unref();
        waiting.set(id, w);
        publishEntry(w);
      });
    },
    async queue(q = {}) {
      const quietMs = q.quietMs ?? 150;
      const filter = fleetQueueFilter(prefix);
      const found = new Map<string, QueuedRequest>();
      let quiet: NodeJS.Timeout | undefined;
      let finish!: () => void;
      const settled = new Promise<void>((resolve) => (finish = resolve));
      const arm = (): void => {
        clearTimeout(quiet);
        quiet = setTimeout(finish, quietMs);
      };
      const onQueue = (topic: string, payload: Buffer): void => {
        const names = parseFleetQueueTopic(prefix, topic);
        if (!names) return;
        found.delete(topic);
        if (payload.length > 0)
          try {
            const r = FleetRequest.safeParse(JSON.parse(payload.toString()));
            if (r.success) found.set(topic, { ...r.data, clientId: names.clientId });
          } catch {
            // not a request: not listed
          }
        arm();
      };
      mqtt.on('message', onQueue);
      // Retained messages follow the SUBACK; the queue is complete once they stop coming.
      const cap = setTimeout(finish, q.timeoutMs ?? 3000);
      try {
        await mqtt.subscribeAsync(filter, { qos: 1 });
        arm();
        await settled;
      } finally {
        clearTimeout(cap);
        clearTimeout(quiet);
        mqtt.off('message', onQueue);
        await mqtt.unsubscribeAsync(filter).catch(() => undefined);
      }
      const now = Date.now();
      return [...found.values()]
        .filter((r) => Date.parse(r.expiresAt) > now)
        .sort((a, b) => a.at.localeCompare(b.at));
    },
    async close() {
      for (const w of waiting.values()) {
        clearEntry(w);
        w.done(new MvirtError('SHUTTING_DOWN', 'the fleet requester was closed'));
      }
      mqtt.off('message', onMessage);
      await mqtt.unsubscribeAsync([claimTopic, replyTopic, statusFilter]).catch(() => undefined);
    },
  };
}
