/**
 * The wire of the private agent exchange, under the agent sessions
 * (sessions.ts): topics, decoding, validation, requests and their replies.
 * Everything a guest says arrives on `<root>/agent/<vmId>/up/<kind>`, is
 * CBOR, and is untrusted: each message is decoded and validated against
 * protocol/agent.ts, and a bad one is logged with the VM id and dropped.
 * The VM id comes from the topic (the broker confines each agent to its own
 * subtree), never from the payload.
 */
import { randomUUID } from 'node:crypto';
import type { Bus, Sender } from '../broker/types.js';
import {
  AGENT_DOWN,
  AGENT_UP,
  type AgentDownMessage,
  type AgentUpMessage,
} from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';
import { inertDeep } from '../../protocol/inert.js';
import { MvirtError } from '../../protocol/errors.js';
import { formatIssues } from '../../protocol/validate.js';
import {
  parseAgentUpTopic,
  type AgentDownKind,
  type AgentUpKind,
  type Topics,
} from '../../protocol/topics.js';
import type { MvirtLogger } from '../log.js';

/**
 * QoS per down kind, 1 unless named. stdin goes at QoS 0, for the keystroke
 * echo of a tty job (bench/tty.ts): a QoS 1 message costs the guest a
 * PUBACK, which mqtt.js writes right after the handler, between the write
 * into the job's stdin and the read of its echo on the guest's one vCPU;
 * and aedes makes a QoS 1 publish wait for its offline-session lookup.
 * Keys alternating QoS 0 and 1 in one VM (2026-12-07, load 8-16, 6 runs of
 * 40 each): echo median 27, 35, 51, 84, 76, 171 ms at QoS 0 against 31, 40,
 * 61, 84, 76, 209 ms at QoS 1.
 * Nothing is lost that QoS 1 would keep: the agent's session is clean (no
 * redelivery), and each stdin is answered (its flow control, host/jobs/io.ts),
 * so a drop times out the call either way. A QoS 0 message may overtake a
 * QoS 1 one published just before it (no lookup to wait for); a job's stdin
 * follows its exec's reply, and each chunk the one before's reply.
 */
const DOWN_QOS: Partial<Record<AgentDownKind, 0 | 1>> = { stdin: 0 };

export type AgentHandler = {
  /** `from`: the broker session that sent it (one Sender per client connection). */
  [K in AgentUpKind]?: (vmId: string, msg: AgentUpMessage[K], from?: Sender) => void;
};

export interface AgentLink {
  start(): Promise<void>;
  /** Send a request (a message with an `id`) and await the agent's reply. */
  call<K extends AgentDownKind>(
    vmId: string,
    kind: K,
    body: Omit<AgentDownMessage[K], 'id'>,
    timeoutMs: number,
  ): Promise<unknown>;
  /** Fail the pending requests of a VM whose agent went away. */
  dropVm(vmId: string, reason: string): void;
  close(): Promise<void>;
}

interface Pending {
  vmId: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export function createAgentLink(deps: {
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  /** Is this VM one we run? Messages for other ids are dropped. */
  isKnown: (vmId: string) => boolean;
  handlers: AgentHandler;
  /**
   * A message of a known VM refused (undecodable or invalid): counted and
   * written aggregated (events/guest-gate.ts), since a guest can send them
   * as fast as its channel goes; mvirtd's own log hears of each at debug only.
   */
  refused?: (vmId: string, what: string) => void;
}): AgentLink {
  const { bus, topics, log, isKnown, handlers } = deps;
  const pending = new Map<string, Pending>();
  let unsubscribe: (() => Promise<void>) | undefined;

  function onMessage(topic: string, payload: Buffer, from?: Sender): void {
    const t = parseAgentUpTopic(topics.root, topic);
    if (!t) return;
    const { vmId, kind } = t;
    if (!isKnown(vmId)) {
      log.debug({ vmId, kind }, 'agent message for a VM that is not running; dropped');
      return;
    }
    let raw: unknown;
    try {
      raw = decodeCbor(payload);
    } catch (err) {
      log.debug({ vmId, kind, err: String(err) }, 'undecodable agent message; dropped');
      deps.refused?.(vmId, `undecodable ${kind} messages refused`);
      return;
    }
    const r = AGENT_UP[kind].safeParse(raw);
    if (!r.success) {
      log.debug({ vmId, kind, problem: formatIssues(r.error) }, 'invalid agent message; dropped');
      deps.refused?.(vmId, `invalid ${kind} messages refused`);
      return;
    }
    // Free text a guest chose (log lines, error messages, a reply's result)
    // is made inert here, once, before anyone stores, logs or shows it.
    // Output and port streams are bytes (their other fields are numbers or of a strict class).
    const m = kind === 'output' || kind === 'port' ? r.data : inertDeep(r.data);
    if (kind === 'reply') return onReply(vmId, m as AgentUpMessage['reply']);
    try {
      (handlers[kind] as ((id: string, m: unknown, f?: Sender) => void) | undefined)?.(
        vmId,
        m,
        from,
      );
    } catch (err) {
      // A handler bug must not let one guest's message take the daemon down.
      log.error({ vmId, kind, err }, 'agent message handler failed');
    }
  }

  function onReply(vmId: string, reply: AgentUpMessage['reply']): void {
    const p = pending.get(reply.id);
    // Only the VM a request went to may answer it.
    if (!p || p.vmId !== vmId) {
      log.debug({ vmId, id: reply.id }, 'agent reply without a pending request; dropped');
      return;
    }
    pending.delete(reply.id);
    clearTimeout(p.timer);
    if (reply.ok) p.resolve(reply.result);
    else
      p.reject(
        new MvirtError('AGENT_ERROR', reply.error?.message ?? 'agent error', {
          details: reply.error ? { code: reply.error.code } : undefined,
        }),
      );
  }

  async function send<K extends AgentDownKind>(
    vmId: string,
    kind: K,
    msg: AgentDownMessage[K],
  ): Promise<void> {
    // Validate our own output too: a host bug should fail here, not in the guest.
    const r = AGENT_DOWN[kind].safeParse(msg);
    if (!r.success)
      throw new MvirtError('INTERNAL', `bad ${kind} message: ${formatIssues(r.error)}`);
    await bus.publish(topics.agentDown(vmId, kind), encodeCbor(msg), { qos: DOWN_QOS[kind] ?? 1 });
  }

  return {
    async start() {
      unsubscribe = await bus.subscribe(topics.agentUpWildcard, onMessage);
    },
    call(vmId, kind, body, timeoutMs) {
      const id = randomUUID();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(
            new MvirtError('TIMEOUT', `agent of ${vmId} did not answer ${kind} in ${timeoutMs} ms`),
          );
        }, timeoutMs);
        pending.set(id, { vmId, resolve, reject, timer });
        send(vmId, kind, { ...body, id } as AgentDownMessage[typeof kind]).catch((err: unknown) => {
          pending.delete(id);
          clearTimeout(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        });
      });
    },
    dropVm(vmId, reason) {
      for (const [id, p] of pending) {
        if (p.vmId !== vmId) continue;
        pending.delete(id);
        clearTimeout(p.timer);
        p.reject(new MvirtError('AGENT_UNAVAILABLE', reason));
      }
    },
    async close() {
      for (const [id, p] of pending) {
        pending.delete(id);
        clearTimeout(p.timer);
        p.reject(new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down'));
      }
      await unsubscribe?.();
    },
  };
}
