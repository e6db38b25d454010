/**
 * The one table from down-kind to handler. Every incoming payload is decoded
 * and validated against the protocol schema before a handler sees it; nothing
 * a host (or a bug) sends can throw out of here. Problems become a `reply`
 * with ok:false when the message carries a readable id, else a `log` message.
 */
import { AGENT_DOWN, AGENT_ERROR, type AgentDownMessage } from '../protocol/agent.js';
import { decodeCbor } from '../protocol/codec.js';
import type { AgentDownKind } from '../protocol/topics.js';
import { formatIssues } from '../protocol/validate.js';
import { errorBody } from './errors.js';

/** A handler result whose side effect must wait until the reply has gone out (power). */
export class AfterReply {
  constructor(
    readonly result: unknown,
    readonly after: () => void,
  ) {}
}

export type Handlers = {
  [K in AgentDownKind]: (msg: AgentDownMessage[K]) => unknown;
};

export interface ReplyBody {
  id: string;
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

export interface DispatchSinks {
  reply(body: ReplyBody, onSent?: () => void): void;
  log(level: 'warn' | 'error', message: string): void;
}

function readId(value: unknown): string | null {
  if (typeof value !== 'object' || value === null) return null;
  const id = (value as { id?: unknown }).id;
  return typeof id === 'string' && id.length > 0 && id.length <= 128 ? id : null;
}

export type Dispatch = (kind: string, payload: Uint8Array) => Promise<void>;

export function createDispatcher(handlers: Handlers, sinks: DispatchSinks): Dispatch {
  const fail = (id: string | null, code: string, message: string) => {
    if (id) sinks.reply({ id, ok: false, error: { code, message: message.slice(0, 4096) } });
    else sinks.log('warn', `${code}: ${message}`.slice(0, 4096));
  };

  return async (kind, payload) => {
    let value: unknown;
    try {
      value = decodeCbor(payload);
    } catch (err) {
      return fail(
        null,
        AGENT_ERROR.BAD_MESSAGE,
        `undecodable ${kind} message: ${(err as Error).message}`,
      );
    }
    const id = readId(value);
    if (!Object.prototype.hasOwnProperty.call(AGENT_DOWN, kind)) {
      return fail(id, AGENT_ERROR.UNKNOWN_KIND, `unknown message kind ${JSON.stringify(kind)}`);
    }
    const k = kind as AgentDownKind;
    const parsed = AGENT_DOWN[k].safeParse(value);
    if (!parsed.success) {
      return fail(id, AGENT_ERROR.BAD_MESSAGE, `invalid ${k}: ${formatIssues(parsed.error)}`);
    }
    try {
      const handler = handlers[k] as (m: unknown) => unknown;
      const out = await handler(parsed.data);
      if (!id) {
        if (out instanceof AfterReply) out.after();
        return;
      }
      if (out instanceof AfterReply) sinks.reply({ id, ok: true, result: out.result }, out.after);
      else sinks.reply({ id, ok: true, ...(out === undefined ? {} : { result: out }) });
    } catch (err) {
      const e = errorBody(err);
      fail(id, e.code, `${k}: ${e.message}`);
    }
  };
}
