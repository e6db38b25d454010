/**
 * The per-role ACL as pure functions (no aedes, no I/O) so the rules can be
 * read and unit-tested on their own. Every function returns null when the
 * action is allowed, otherwise the reason it is refused (logged by the caller).
 *
 * Roles:
 *  - controller: may publish `<root>/rpc/<method>` and `<root>/vm/<id>/console/in`
 *    and anything outside `<root>/` (its own reply topics); nothing else under
 *    `<root>/`, so it cannot forge status, VM, job or agent topics. Retained
 *    only outside `<root>/`. May subscribe to anything except the agent
 *    subtree; agent traffic is also filtered on delivery so `#` cannot see it.
 *  - agent of VM v: publishes only below `<root>/agent/v/up/`, subscribes only
 *    below `<root>/agent/v/down/`, never retained. The identity is the channel
 *    (or the VM id + token over guest TCP); nothing the guest sends changes it.
 *  - the daemon: in-process, bypasses these hooks (aedes.publish/subscribe).
 */
import { nameProblem, parseRpcTopic } from '../../protocol/topics.js';
import { filterProblem, publishTopicProblem } from './validate.js';

export type Principal =
  | {
      role: 'controller';
      /** The users-file user, or null for an anonymous controller on the unix socket. */
      user: string | null;
      /** Unix socket: the local user on the other end (peer credentials), for the audit log. */
      local?: { uid: number; user: string | null; pid: number } | null;
    }
  | { role: 'agent'; vmId: string };

const under = (topic: string, prefix: string): boolean =>
  topic.length > prefix.length && topic.startsWith(prefix);

/** The topic is `<root>` itself or below it. */
export const inRoot = (root: string, topic: string): boolean =>
  topic === root || topic.startsWith(`${root}/`);

/** The topic is in the private agent subtree (any VM). */
export const isAgentTopic = (root: string, topic: string): boolean =>
  topic === `${root}/agent` || topic.startsWith(`${root}/agent/`);

export const agentUpPrefix = (root: string, vmId: string): string => `${root}/agent/${vmId}/up/`;
export const agentDownPrefix = (root: string, vmId: string): string =>
  `${root}/agent/${vmId}/down/`;

function isConsoleIn(root: string, topic: string): boolean {
  const pre = `${root}/vm/`;
  if (!topic.startsWith(pre) || !topic.endsWith('/console/in')) return false;
  const vmId = topic.slice(pre.length, topic.length - '/console/in'.length);
  return nameProblem(vmId) === null;
}

export function controllerPublishProblem(
  root: string,
  topic: string,
  retain: boolean,
): string | null {
  const bad = publishTopicProblem(topic);
  if (bad !== null) return bad;
  if (topic.startsWith('$')) return "topics starting with '$' are reserved";
  if (!inRoot(root, topic)) return null;
  if (retain) return `retained messages under ${root}/ are published by the daemon only`;
  const method = parseRpcTopic(root, topic);
  if (method !== null && nameProblem(method) === null) return null;
  if (isConsoleIn(root, topic)) return null;
  return `controllers may publish under ${root}/ only to rpc/<method> and vm/<id>/console/in`;
}

export function controllerSubscribeProblem(root: string, filter: string): string | null {
  const bad = filterProblem(filter);
  if (bad !== null) return bad;
  // An explicit filter into the agent subtree can never be served: refuse it
  // outright (SUBACK 0x80) rather than grant a subscription that stays silent.
  if (isAgentTopic(root, filter)) return 'the agent subtree is private to the daemon';
  return null;
}

/** Delivery filter for controllers: wildcard subscriptions never see agent traffic. */
export const controllerMayReceive = (root: string, topic: string): boolean =>
  !isAgentTopic(root, topic);

export function agentPublishProblem(
  root: string,
  vmId: string,
  topic: string,
  retain: boolean,
): string | null {
  const bad = publishTopicProblem(topic);
  if (bad !== null) return bad;
  if (!under(topic, agentUpPrefix(root, vmId)))
    return `an agent may publish only below ${agentUpPrefix(root, vmId)}`;
  if (retain) return 'agents may not publish retained messages';
  return null;
}

export function agentSubscribeProblem(root: string, vmId: string, filter: string): string | null {
  const bad = filterProblem(filter);
  if (bad !== null) return bad;
  // The literal prefix has no wildcard (root and vmId are validated names), so
  // any wildcard in the filter sits below the agent's own down/ level.
  if (!under(filter, agentDownPrefix(root, vmId)))
    return `an agent may subscribe only below ${agentDownPrefix(root, vmId)}`;
  return null;
}

export const agentMayReceive = (root: string, vmId: string, topic: string): boolean =>
  under(topic, agentDownPrefix(root, vmId));

/** The one client id an agent of vmId may use (an empty id is given this one). */
export const agentClientId = (vmId: string): string => `agent-${vmId}`;

/** Controllers may not take ids reserved for agents (that would kick an agent off). */
export const RESERVED_CLIENT_ID_PREFIX = 'agent-';

export const publishProblem = (
  root: string,
  p: Principal,
  topic: string,
  retain: boolean,
): string | null =>
  p.role === 'agent'
    ? agentPublishProblem(root, p.vmId, topic, retain)
    : controllerPublishProblem(root, topic, retain);

export const subscribeProblem = (root: string, p: Principal, filter: string): string | null =>
  p.role === 'agent'
    ? agentSubscribeProblem(root, p.vmId, filter)
    : controllerSubscribeProblem(root, filter);

export const mayReceive = (root: string, p: Principal, topic: string): boolean =>
  p.role === 'agent' ? agentMayReceive(root, p.vmId, topic) : controllerMayReceive(root, topic);
