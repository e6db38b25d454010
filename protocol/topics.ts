/**
 * Topic names: the only place that spells them. `root` is `<prefix>/<hostId>`.
 * The public ones are documented in docs/protocol.md; the agent subtree is private.
 */
import { utf8Length } from './text.js';

export const DEFAULT_PREFIX = 'mvirt';

export const MAX_TOPIC_LENGTH = 512;
export const MAX_TOPIC_LEVELS = 16;
export const MAX_NAME_LENGTH = 64;

export const hostRoot = (prefix: string, hostId: string): string => `${prefix}/${hostId}`;

export const topics = (root: string) => ({
  root,
  rpc: (method: string) => `${root}/rpc/${method}`,
  rpcWildcard: `${root}/rpc/+`,
  status: `${root}/status`,
  events: `${root}/events`,
  vmState: (vmId: string) => `${root}/vm/${vmId}/state`,
  vmEvents: (vmId: string) => `${root}/vm/${vmId}/events`,
  vmTelemetry: (vmId: string) => `${root}/vm/${vmId}/telemetry`,
  vmConsoleOut: (vmId: string) => `${root}/vm/${vmId}/console/out`,
  vmConsoleIn: (vmId: string) => `${root}/vm/${vmId}/console/in`,
  vmConsoleInWildcard: `${root}/vm/+/console/in`,
  jobState: (jobId: string) => `${root}/job/${jobId}/state`,
  jobOutput: (jobId: string) => `${root}/job/${jobId}/output`,
  poolState: (name: string) => `${root}/pool/${name}/state`,
  volumeState: (volumeId: string) => `${root}/volume/${volumeId}/state`,
  /** Private agent subtree of one VM: the guest may only touch what is below it. */
  agentRoot: (vmId: string) => `${root}/agent/${vmId}`,
  /** guest → host */
  agentUp: (vmId: string, kind: AgentUpKind) => `${root}/agent/${vmId}/up/${kind}`,
  agentUpWildcard: `${root}/agent/+/up/#`,
  /** host → guest */
  agentDown: (vmId: string, kind: AgentDownKind) => `${root}/agent/${vmId}/down/${kind}`,
  agentDownWildcard: (vmId: string) => `${root}/agent/${vmId}/down/+`,
});

export type Topics = ReturnType<typeof topics>;

export const AGENT_UP_KINDS = [
  'hello',
  'ready',
  'reply',
  'output',
  'exit',
  'telemetry',
  'log',
  /** Port-forward streams (protocol/ports.ts). */
  'port',
] as const;
export type AgentUpKind = (typeof AGENT_UP_KINDS)[number];
export const AGENT_DOWN_KINDS = [
  'exec',
  'stdin',
  'signal',
  'power',
  'ping',
  'configure',
  'blockDevices',
  'sync',
  'resize',
  'fsWrite',
  'fsRead',
  'fsOp',
  'port',
] as const;
export type AgentDownKind = (typeof AGENT_DOWN_KINDS)[number];

/**
 * Retained by mvirtd's embedded broker before its listeners open: which host
 * the broker belongs to (records.ts BrokerOwner). No other host publishes on
 * that broker and controllers may not publish here, so a controller that
 * reads it knows the host without waiting for retained statuses to stop
 * coming (connect.ts). Outside every host subtree, like `_clients`.
 */
export const brokerTopic = (prefix: string): string => `${prefix}/_broker`;

/** The reply topic of one client: outside every host subtree, one per client id. */
export const replyTopicFor = (prefix: string, clientId: string): string =>
  `${prefix}/_clients/${clientId}/replies`;

/** Does an MQTT topic filter (with + and #) match a topic? */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === '#') return i > 0 || !topic.startsWith('$');
    if (i >= t.length) return false;
    if (part === '+') {
      if (i === 0 && t[0]!.startsWith('$')) return false;
      continue;
    }
    if (part !== t[i]) return false;
  }
  return f.length === t.length;
}

/** Parse `<root>/agent/<vmId>/up/<kind>`; null when it is not one. */
export function parseAgentUpTopic(
  root: string,
  topic: string,
): { vmId: string; kind: AgentUpKind } | null {
  const pre = `${root}/agent/`;
  if (!topic.startsWith(pre)) return null;
  const rest = topic.slice(pre.length).split('/');
  if (rest.length !== 3 || rest[1] !== 'up') return null;
  const [vmId, , kind] = rest as [string, string, string];
  if (!(AGENT_UP_KINDS as readonly string[]).includes(kind)) return null;
  return { vmId, kind: kind as AgentUpKind };
}

/** Parse `<root>/rpc/<method>`; null when it is not one. */
export function parseRpcTopic(root: string, topic: string): string | null {
  const pre = `${root}/rpc/`;
  if (!topic.startsWith(pre)) return null;
  const method = topic.slice(pre.length);
  return method.length > 0 && !method.includes('/') ? method : null;
}

// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const FORBIDDEN = /[+#\u0000-\u001f\u007f]/;

/**
 * A topic (for publish; wildcards are not allowed) is valid when it has no
 * wildcard, NUL or control characters, is not empty and stays within the
 * length and depth bounds.
 */
export function topicProblem(
  topic: string,
  opts: { allowWildcards?: boolean } = {},
): string | null {
  if (topic.length === 0) return 'empty topic';
  if (utf8Length(topic) > MAX_TOPIC_LENGTH) return `topic longer than ${MAX_TOPIC_LENGTH} bytes`;
  if (topic.split('/').length > MAX_TOPIC_LEVELS)
    return `topic deeper than ${MAX_TOPIC_LEVELS} levels`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(topic)) return 'control character in topic';
  if (!opts.allowWildcards && /[+#]/.test(topic)) return 'wildcard in topic';
  return null;
}

/** Names of VMs, pools, images, host ids and client ids: one safe alphabet. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function nameProblem(name: string): string | null {
  if (FORBIDDEN.test(name)) return 'contains +, #, NUL or a control character';
  if (!NAME_RE.test(name) || name === '.' || name.includes('..'))
    return `must match ${NAME_RE.source} (letters, digits, '.', '_', '-'; no '/' or '..')`;
  return null;
}
