/**
 * The per-role ACL as pure functions (no aedes, no I/O) so the rules can be
 * read and unit-tested on their own. Every function returns null when the
 * action is allowed, otherwise the reason it is refused (logged by the caller).
 *
 * Roles:
 *  - controller: may publish `<root>/rpc/<method>` and `<root>/vm/<id>/console/in`
 *    and anything outside `<root>/` (its own reply topics) but `<prefix>/_broker`;
 *    nothing else under `<root>/`, so it cannot forge status, VM, job or agent
 *    topics, nor which host the broker belongs to. Retained only outside `<root>/`. May subscribe to anything except the agent
 *    subtree; agent traffic is also filtered on delivery so `#` cannot see it.
 *  - agent of VM v: publishes only below `<root>/agent/v/up/`, subscribes only
 *    below `<root>/agent/v/down/`, never retained. The identity is the channel
 *    (or the VM id + token over guest TCP); nothing the guest sends changes it.
 *  - the daemon: in-process, bypasses these hooks (aedes.publish/subscribe).
 *
 * On top of that base, a controller's role and scope (host/auth/roles.ts)
 * narrow what it may publish and receive (`controllerMay…` with an
 * AclContext): a viewer never types on a console; a scoped controller receives
 * only its own VMs', jobs', pools' and volumes' topics and events; nobody receives
 * requests (`rpc/`), `$` topics or another user's reply namespace
 * `<prefix>/_clients/<clientId>/`, and nobody publishes into one.
 */
import { brokerTopic, nameProblem, parseRpcTopic } from '../../protocol/topics.js';
import { inScope, roleAtLeast, type Access, type ObjectKind } from '../auth/roles.js';
import { filterProblem, publishTopicProblem } from './validate.js';

export interface ControllerPrincipal {
  role: 'controller';
  /** The authenticated user; null when anonymous. */
  user: string | null;
  /** A local user named by the unix socket's peer credentials (anonymous controllers). */
  unixUser?: string;
  /** Unix socket: the local user on the other end (peer credentials), for the audit log. */
  local?: { uid: number; user: string | null; pid: number } | null;
  access: Access;
  clientId: string;
}
export type Principal = ControllerPrincipal | { role: 'agent'; vmId: string };

/** Who owns a client id: `user:<name>`, `unix:<name>` or `anonymous`. */
export const identityOf = (p: ControllerPrincipal): string =>
  p.user !== null ? `user:${p.user}` : p.unixUser ? `unix:${p.unixUser}` : 'anonymous';

/** What the per-controller rules need to know beyond the topic. */
export interface AclContext {
  /** `<prefix>/<hostId>` */
  root: string;
  /** `<prefix>/_clients/`: reply namespaces, one per client id. */
  clientsPrefix: string;
  /** Owner label of an object, null when it has none (host/store/owners.ts). */
  ownerOf(kind: ObjectKind, id: string): string | null;
  /** Identity the client id is bound to (identityOf), null when free. */
  clientIdentity(clientId: string): string | null;
}

/** `<prefix>/_clients/` for a root `<prefix>/<hostId>`. */
export const clientsPrefixOf = (root: string): string =>
  `${root.slice(0, root.lastIndexOf('/'))}/_clients/`;

/** The client id whose namespace a topic lies in, or null when it lies in none. */
function namespaceClient(ctx: AclContext, topic: string): string | null {
  if (!topic.startsWith(ctx.clientsPrefix)) return null;
  const rest = topic.slice(ctx.clientsPrefix.length);
  const slash = rest.indexOf('/');
  return slash === -1 ? rest : rest.slice(0, slash);
}

/** Is the client id's namespace this controller's (its own id, or one bound to the same user)? */
const ownsNamespace = (ctx: AclContext, p: ControllerPrincipal, clientId: string): boolean =>
  clientId === p.clientId || ctx.clientIdentity(clientId) === identityOf(p);

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
  if (topic === brokerTopic(root.slice(0, root.lastIndexOf('/'))))
    return `${topic} says whose broker this is: the daemon's alone`;
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

/** The base rules plus role, scope and reply namespaces. */
export function controllerMayPublish(
  ctx: AclContext,
  p: ControllerPrincipal,
  topic: string,
  retain: boolean,
): string | null {
  const base = controllerPublishProblem(ctx.root, topic, retain);
  if (base !== null) return base;
  const cid = namespaceClient(ctx, topic);
  if (cid !== null && !ownsNamespace(ctx, p, cid))
    return `${ctx.clientsPrefix}${cid}/ is another controller's reply namespace`;
  if (isConsoleIn(ctx.root, topic)) {
    if (!roleAtLeast(p.access.role, 'operator'))
      return `a ${p.access.role} may not type on a VM's console`;
    const vmId = topic.split('/')[ctx.root.split('/').length + 1]!;
    if (!inScope(p.access, ctx.ownerOf('vm', vmId)))
      return `VM ${vmId} is outside scope ${p.access.scope}`;
  }
  return null;
}

export function controllerMaySubscribe(
  ctx: AclContext,
  p: ControllerPrincipal,
  filter: string,
): string | null {
  const base = controllerSubscribeProblem(ctx.root, filter);
  if (base !== null) return base;
  // $SYS lists every client id and more: nothing there is a controller's business.
  if (filter.startsWith('$')) return "'$' topics are not served to controllers";
  if (filter === `${ctx.root}/rpc` || filter.startsWith(`${ctx.root}/rpc/`))
    return 'requests are read by the daemon only';
  const cid = namespaceClient(ctx, filter);
  if (cid !== null && cid !== '+' && cid !== '#' && !ownsNamespace(ctx, p, cid))
    return `${ctx.clientsPrefix}${cid}/ is another controller's reply namespace`;
  return null;
}

const ROOT_KINDS: Record<string, ObjectKind | undefined> = {
  vm: 'vm',
  job: 'job',
  pool: 'pool',
  volume: 'volume',
};

/**
 * Per-message delivery check (aedes authorizeForward), so wildcard filters
 * (`#`, `mvirt/+/vm/+/state`) see exactly what the controller may see. Cheap
 * on purpose: a prefix test or two and, for scoped controllers, one cached
 * owner lookup (bench/authz.ts measures it).
 */
export function controllerMayReceiveAs(
  ctx: AclContext,
  p: ControllerPrincipal,
  topic: string,
  payload: Buffer | string,
): boolean {
  if (topic.charCodeAt(0) === 36 /* $ */) return false;
  const cid = namespaceClient(ctx, topic);
  if (cid !== null) return ownsNamespace(ctx, p, cid);
  const root = ctx.root;
  if (!(topic.length > root.length && topic.startsWith(root) && topic[root.length] === '/'))
    return true;
  const next = topic.indexOf('/', root.length + 1);
  const family = topic.slice(root.length + 1, next === -1 ? undefined : next);
  if (family === 'agent' || family === 'rpc') return false;
  const scope = p.access.scope;
  if (scope === null) return true;
  const kind = ROOT_KINDS[family];
  if (kind !== undefined) {
    if (next === -1) return false;
    const end = topic.indexOf('/', next + 1);
    return ctx.ownerOf(kind, topic.slice(next + 1, end === -1 ? undefined : end)) === scope;
  }
  if (family === 'events') return eventInScope(ctx, scope, payload);
  return true;
}

/** The host's event stream, for a scoped controller: events naming one of its objects. */
function eventInScope(ctx: AclContext, scope: string, payload: Buffer | string): boolean {
  let objects: unknown;
  try {
    objects = (JSON.parse(payload.toString()) as { objects?: unknown }).objects;
  } catch {
    return false;
  }
  if (!Array.isArray(objects)) return false;
  return objects.some(
    (o) =>
      typeof o === 'string' &&
      (ctx.ownerOf('vm', o) === scope ||
        ctx.ownerOf('job', o) === scope ||
        ctx.ownerOf('pool', o) === scope ||
        ctx.ownerOf('volume', o) === scope ||
        ctx.ownerOf('snapshot', o) === scope),
  );
}

/**
 * May the daemon send this request's reply to `replyTo`? Only into the
 * requester's own reply namespace (PROTOCOL.md): any other topic could be read
 * by another controller, so replies there would not be private.
 */
export function replyTopicRefusal(
  ctx: AclContext,
  p: ControllerPrincipal,
  replyTo: string,
): string | null {
  const cid = namespaceClient(ctx, replyTo);
  if (cid === null)
    return `replies go only to ${ctx.clientsPrefix}<clientId>/replies[/…] (your client id: ${p.clientId})`;
  const rest = replyTo.slice(ctx.clientsPrefix.length + cid.length);
  if (rest !== '/replies' && !rest.startsWith('/replies/'))
    return `replies go only to ${ctx.clientsPrefix}<clientId>/replies[/…]`;
  if (!ownsNamespace(ctx, p, cid))
    return `client id ${cid} is not connected as ${identityOf(p)}: its replies are not yours`;
  return null;
}

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
  ctx: AclContext,
  p: Principal,
  topic: string,
  retain: boolean,
): string | null =>
  p.role === 'agent'
    ? agentPublishProblem(ctx.root, p.vmId, topic, retain)
    : controllerMayPublish(ctx, p, topic, retain);

export const subscribeProblem = (ctx: AclContext, p: Principal, filter: string): string | null =>
  p.role === 'agent'
    ? agentSubscribeProblem(ctx.root, p.vmId, filter)
    : controllerMaySubscribe(ctx, p, filter);

export const mayReceive = (
  ctx: AclContext,
  p: Principal,
  topic: string,
  payload: Buffer | string,
): boolean =>
  p.role === 'agent'
    ? agentMayReceive(ctx.root, p.vmId, topic)
    : controllerMayReceiveAs(ctx, p, topic, payload);
