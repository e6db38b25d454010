/**
 * The RPC server: requests on `<root>/rpc/<method>`, replies to `replyTo` in
 * the request's encoding. This is the ONE place that turns failures into
 * replies (protocol toErrorBody): handlers just throw MvirtError.
 *
 * Input is untrusted: anything that cannot be decoded, validated or routed
 * gets a typed error (when a reply topic can be read) and nothing else.
 */
import type { Bus, Sender } from '../broker/types.js';
import type { AppendEvent } from '../events/log.js';
import type { AccessCheck } from './access.js';
import { salvageCbor } from './salvage.js';
import { decode, encode, sniffEncoding, type Encoding } from '../../protocol/codec.js';
import { MvirtError, toErrorBody, type ErrorBody } from '../../protocol/errors.js';
import { RequestEnvelope, type ReplyEnvelope, type RpcMethod } from '../../protocol/rpc.js';
import { parseRpcTopic, topicProblem, type Topics } from '../../protocol/topics.js';
import { parseWith } from '../../protocol/validate.js';
import type { MvirtLogger } from '../log.js';
import type { Route, RouteTable } from './types.js';

export interface Api {
  start(): Promise<void>;
  close(): Promise<void>;
  /** Requests being handled now (for logs and shutdown). */
  inFlight(): number;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

/**
 * The daemon publishes replies with its own authority, so a reply topic must
 * lie outside the host's tree (as the protocol client's do): inside it, a
 * request could make the daemon forge agent commands, VM state or status.
 */
export function replyTopicProblem(root: string, topic: string): string | null {
  const p = topicProblem(topic);
  if (p) return p;
  if (topic.startsWith('$')) return 'reply topic in a $-prefixed (system) tree';
  if (topic === root || topic.startsWith(`${root}/`)) return `reply topic inside ${root}/`;
  return null;
}

/** An id is echoed up to this many characters (the envelope allows no more). */
const MAX_ECHOED_ID = 256;

/** Best effort for payloads that are not valid JSON: still find where to reply. */
function salvage(payload: Buffer): { replyTo?: string; id?: string } {
  const text = payload.subarray(0, 4096).toString('utf8');
  const str = (key: string): string | undefined => {
    const m = new RegExp(`"${key}"\\s*:\\s*"((?:[^"\\\\]|\\\\.){1,512})"`).exec(text);
    if (!m) return undefined;
    try {
      return JSON.parse(`"${m[1]}"`) as string;
    } catch {
      return undefined;
    }
  };
  const out: { replyTo?: string; id?: string } = {};
  const replyTo = str('replyTo');
  const id = str('id');
  if (replyTo !== undefined) out.replyTo = replyTo;
  if (id !== undefined) out.id = id;
  return out;
}

/** Error messages and details stay short whatever the request held (issue 11). */
const MAX_ERROR_MESSAGE = 1024;
const MAX_ERROR_DETAILS = 4096;

type WireError = Pick<ErrorBody, 'message' | 'details'> & { code: string };

function boundError(e: WireError): WireError {
  const out: WireError = { code: e.code, message: e.message };
  if (e.message.length > MAX_ERROR_MESSAGE)
    out.message = `${e.message.slice(0, MAX_ERROR_MESSAGE)}… (${e.message.length - MAX_ERROR_MESSAGE} more characters)`;
  if (e.details !== undefined) {
    let size = Infinity;
    try {
      size = JSON.stringify(e.details).length;
    } catch {
      // circular or otherwise unencodable: dropped below
    }
    if (size <= MAX_ERROR_DETAILS) out.details = e.details;
  }
  return out;
}

export function createApi(deps: {
  bus: Bus;
  topics: Topics;
  routes: RouteTable;
  log: MvirtLogger;
  /** Role and scope checks (access.ts); without it every caller may call everything. */
  access?: AccessCheck;
  /** Records refusals in the event log (level audit). */
  audit?: (e: AppendEvent) => void;
}): Api {
  const { bus, topics, routes } = deps;
  const log = deps.log.child({ component: 'api' });
  let unsubscribe: (() => Promise<void>) | undefined;
  let inFlight = 0;

  async function reply(
    replyTo: string | undefined,
    encoding: Encoding,
    body: ReplyEnvelope,
    sender: Sender | undefined,
  ): Promise<void> {
    if (replyTo === undefined) return; // fire-and-forget request
    const refused = sender?.replyRefusal(replyTo) ?? null;
    if (refused !== null) {
      log.warn({ replyTo, reason: refused }, 'refusing to reply to this topic');
      return;
    }
    const problem = replyTopicProblem(topics.root, replyTo);
    if (problem) {
      log.warn({ replyTo, problem }, 'refusing to reply to this topic');
      return;
    }
    if (!body.ok) body = { ...body, error: boundError(body.error) };
    // QoS 0: callers are connected and waiting; in aedes a QoS 1 publish also
    // looks up offline sessions on every reply, which costs the round trip
    // about a third (bench/daemon.ts).
    await bus.publish(replyTo, encode(body, encoding), { qos: 0 });
  }

  async function handle(topic: string, payload: Buffer, sender: Sender | undefined): Promise<void> {
    const method = parseRpcTopic(topics.root, topic);
    if (method === null) return;
    const encoding = sniffEncoding(payload);
    let replyTo: string | undefined;
    let id: string | undefined;
    const t0 = performance.now();
    try {
      let raw: unknown;
      try {
        raw = decode(payload, encoding);
      } catch (err) {
        ({ replyTo, id } = encoding === 'json' ? salvage(payload) : salvageCbor(payload));
        throw new MvirtError('BAD_REQUEST', `the request is not valid ${encoding.toUpperCase()}`, {
          cause: err,
        });
      }
      if (!isObject(raw)) {
        throw new MvirtError(
          'BAD_REQUEST',
          'the request must be an object with id, replyTo, params',
        );
      }
      // Read where to reply before validating, so a bad envelope still gets an answer.
      if (typeof raw.replyTo === 'string' && raw.replyTo.length > 0) replyTo = raw.replyTo;
      if (typeof raw.id === 'string') id = raw.id.slice(0, MAX_ECHOED_ID);
      // A reply goes only where the caller alone can read it (its own reply
      // namespace); anywhere else the request is not even run.
      const refused = replyTo === undefined ? null : (sender?.replyRefusal(replyTo) ?? null);
      if (refused !== null) {
        log.warn({ method, replyTo, reason: refused }, 'request dropped: reply topic refused');
        replyTo = undefined;
        return;
      }
      const env = parseWith(RequestEnvelope, raw, 'BAD_REQUEST', 'request');
      if (!Object.prototype.hasOwnProperty.call(routes, method)) {
        throw new MvirtError('UNKNOWN_METHOD', `no method named ${method}`, {
          details: { method },
        });
      }
      const route = routes[method as RpcMethod] as Route<RpcMethod>;
      const params: unknown = parseWith(route.schema, env.params);
      authorize(sender, method as RpcMethod, route, params);
      const ctx = { method: method as RpcMethod, encoding, ...(id !== undefined ? { id } : {}) };
      // A dry run answers with its plan (a description of objects the caller
      // may already act on, so nothing to filter) and records nothing.
      const dry = route.plan !== undefined && isObject(params) && params.dryRun === true;
      type Call = (p: unknown, c: typeof ctx) => unknown;
      const out = await ((dry ? route.plan : route.handler) as Call)(params, ctx);
      const result =
        !dry && sender && deps.access
          ? deps.access.filter(sender.access, method as RpcMethod, out)
          : out;
      log.debug({ method, id, ms: Math.round(performance.now() - t0) }, 'request done');
      await reply(
        replyTo,
        encoding,
        { ...(id !== undefined ? { id } : {}), ok: true, result },
        sender,
      );
    } catch (err) {
      const error = toErrorBody(err);
      if (error.code === 'INTERNAL') log.error({ method, id, err }, 'request failed unexpectedly');
      else log.debug({ method, id, code: error.code, message: error.message }, 'request refused');
      await reply(
        replyTo,
        encoding,
        { ...(id !== undefined ? { id } : {}), ok: false, error },
        sender,
      );
    }
  }

  /** Throws FORBIDDEN (and records it) unless the sender may make this call. */
  function authorize(
    sender: Sender | undefined,
    method: RpcMethod,
    route: Route<RpcMethod>,
    params: unknown,
  ): void {
    if (sender === undefined)
      throw new MvirtError('FORBIDDEN', 'a request of unknown origin is not served');
    const no = deps.access?.check(sender.access, method, route.permission, params) ?? null;
    if (no === null) return;
    deps.audit?.({
      level: 'audit',
      component: 'api',
      message: `${method} refused: ${no.reason}`,
      objects: no.objects,
      data: { method, refused: true },
    });
    throw new MvirtError('FORBIDDEN', no.reason, { details: { method } });
  }

  return {
    async start() {
      unsubscribe = await bus.subscribe(topics.rpcWildcard, (topic, payload, sender) => {
        inFlight++;
        handle(topic, payload, sender)
          .catch((err: unknown) => log.error({ err, topic }, 'cannot send reply'))
          .finally(() => inFlight--);
      });
    },
    async close() {
      await unsubscribe?.();
      unsubscribe = undefined;
    },
    inFlight: () => inFlight,
  };
}
