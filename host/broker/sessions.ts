/**
 * Client ids bound to the identity that connected with them (acl.ts
 * identityOf). MQTT lets a new connection with a client id take over the
 * session of that id (the old connection is closed, a clean=false session is
 * resumed with its subscriptions and queued messages); across users that is
 * a hijack. So an id belongs to the identity that holds it: while its client
 * is connected and, for a persistent (clean=false) session, until the daemon
 * restarts (aedes keeps sessions in memory, so they end together). The same
 * user may take over its own id, as MQTT intends.
 */
import type { Client } from 'aedes';
import { identityOf, type ControllerPrincipal } from './acl.js';
import type { Registry } from './registry.js';

/** Bound ids beyond this refuse new persistent sessions (memory stays bounded). */
export const MAX_PERSISTENT_BINDINGS = 10_000;

/** Bind the client's id to its identity; null when done, otherwise why it is refused. */
export function bindClientId(
  registry: Registry,
  client: Client,
  principal: ControllerPrincipal,
): string | null {
  const identity = identityOf(principal);
  const held = registry.bindings.get(client.id);
  if (held && held.identity !== identity)
    return `client id ${JSON.stringify(client.id)} is in use by another user; choose another`;
  const persistent = !client.clean;
  if (persistent && !held && registry.bindings.size >= MAX_PERSISTENT_BINDINGS)
    return 'too many persistent sessions on this host; connect with a clean session';
  registry.bindings.set(client.id, { identity, client, persistent });
  return null;
}

/** A client left: free its id unless it left a persistent session (or another took it over). */
export function releaseClientId(registry: Registry, client: Client): void {
  const held = registry.bindings.get(client.id);
  if (!held || held.client !== client) return;
  if (held.persistent) held.client = null;
  else registry.bindings.delete(client.id);
}
