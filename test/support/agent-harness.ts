/**
 * Runs the real agent core against a real aedes broker over in-memory streams
 * and plays the host: records every up message (validated against the
 * protocol schema), publishes down messages, and lets tests await messages
 * (past or future) instead of sleeping.
 */
import { Aedes } from 'aedes';
import { once } from 'node:events';
import { AGENT_UP, type AgentUpMessage, type Reply } from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';
import { topics, type AgentDownKind, type AgentUpKind } from '../../protocol/topics.js';
import { createAgent, type Agent, type AgentOptions } from '../../guest-agent/agent.js';
import { TEST_AGENT_OPTIONS } from '../../harness/agent-options.js';
import type { Settings } from '../../guest-agent/settings.js';
import { createFakePlatform, type FakePlatform } from './agent-platform.js';

export const ROOT = 'mvirt/test';

export const VM = 'vm-test';
export const WAIT_MS = 10_000;

export interface Received {
  kind: AgentUpKind;
  topic: string;
  msg: unknown;
  /** Schema problem, if the agent sent something invalid (tests assert none). */
  invalid?: string;
}

export interface Harness {
  broker: Aedes;
  platform: FakePlatform;
  agent: Agent;
  settings: Settings;
  received: Received[];
  clientIds: string[];
  waitFor<K extends AgentUpKind>(
    kind: K,
    pred?: (m: AgentUpMessage[K]) => boolean,
    opts?: { since?: number; timeoutMs?: number },
  ): Promise<AgentUpMessage[K]>;
  all<K extends AgentUpKind>(kind: K, since?: number): AgentUpMessage[K][];
  /** Down messages go to VM's topics unless `vmId` names another (a restored agent's new self). */
  send(kind: AgentDownKind | string, msg: unknown, vmId?: string): Promise<void>;
  sendRaw(kind: string, payload: Buffer, vmId?: string): Promise<void>;
  request(
    kind: AgentDownKind,
    msg: { id: string } & Record<string, unknown>,
    vmId?: string,
  ): Promise<Reply>;
  close(): Promise<void>;
}

let ids = 0;
export const nextId = (p = 'r'): string => `${p}-${++ids}`;

export async function startHarness(
  o: { agent?: Partial<AgentOptions>; settings?: Partial<Settings>; start?: boolean } = {},
): Promise<Harness> {
  const broker = await Aedes.createBroker();
  const t = topics(ROOT);
  const received: Received[] = [];
  const clientIds: string[] = [];
  const waiters = new Set<() => void>();
  broker.on('client', (c) => clientIds.push(c.id));

  await new Promise<void>((resolve) =>
    // Every VM's: a restored agent speaks as another VM.
    broker.subscribe(
      `${t.agentRoot('+')}/up/+`,
      (packet, cb) => {
        const kind = packet.topic.split('/').pop() as AgentUpKind;
        let msg: unknown;
        let invalid: string | undefined;
        try {
          msg = decodeCbor(packet.payload as Buffer);
          const r = AGENT_UP[kind]?.safeParse(msg);
          if (!r?.success) invalid = r ? r.error.message : `unknown kind ${kind}`;
        } catch (err) {
          invalid = (err as Error).message;
        }
        received.push({ kind, topic: packet.topic, msg, ...(invalid ? { invalid } : {}) });
        for (const w of [...waiters]) w();
        cb();
      },
      resolve,
    ),
  );

  const platform = createFakePlatform((host) => broker.handle(host));
  const settings: Settings = {
    vmId: VM,
    root: ROOT,
    channel: { kind: 'virtio-serial', portName: 'mvirt.agent' },
    telemetryMs: 3_600_000,
    tokenPath: '/run/mvirt/token',
    initUptimePath: '/run/mvirt/init-uptime',
    ...o.settings,
  };
  const agent = createAgent(platform, settings, {
    ...TEST_AGENT_OPTIONS,
    console: () => undefined,
    ...o.agent,
  });

  const all = <K extends AgentUpKind>(kind: K, since = 0) =>
    received
      .slice(since)
      .filter((r) => r.kind === kind)
      .map((r) => r.msg as AgentUpMessage[K]);

  const waitFor: Harness['waitFor'] = (kind, pred = () => true, opts = {}) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const hit = all(kind, opts.since ?? 0).find((m) => pred(m));
        if (hit === undefined) return false;
        waiters.delete(check);
        clearTimeout(timer);
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(`timed out waiting for ${kind}; got ${received.map((r) => r.kind).join(',')}`),
        );
      }, opts.timeoutMs ?? WAIT_MS);
      waiters.add(check);
      check();
    });

  const sendRaw = (kind: string, payload: Buffer, vmId = VM) =>
    new Promise<void>((resolve, reject) =>
      broker.publish(
        {
          cmd: 'publish',
          topic: `${t.agentRoot(vmId)}/down/${kind}`,
          payload,
          qos: 1,
          retain: false,
          dup: false,
        },
        (err) => (err ? reject(err) : resolve()),
      ),
    );

  const h: Harness = {
    broker,
    platform,
    agent,
    settings,
    received,
    clientIds,
    waitFor,
    all,
    send: (kind, msg, vmId) => sendRaw(kind, encodeCbor(msg), vmId),
    sendRaw,
    async request(kind, msg, vmId) {
      const since = received.length;
      await h.send(kind, msg, vmId);
      return waitFor('reply', (r) => r.id === msg.id, { since });
    },
    async close() {
      await agent.stop();
      await new Promise<void>((r) => broker.close(() => r()));
    },
  };
  if (o.start !== false) {
    await agent.start();
    await waitFor('ready');
  }
  return h;
}

/** Concatenated output of one job and stream, in seq order (duplicates by seq ignored). */
export function jobOutput(h: Harness, jobId: string, stream?: 'stdout' | 'stderr'): string {
  const bySeq = new Map<number, AgentUpMessage['output']>();
  for (const o of h.all('output')) if (o.jobId === jobId) bySeq.set(o.seq, o);
  return [...bySeq.values()]
    .sort((a, b) => a.seq - b.seq)
    .filter((o) => !stream || o.stream === stream)
    .map((o) => Buffer.from(o.data).toString())
    .join('');
}

export { once };
