/**
 * Who acts: every event and audit record names its actor. The actor of a
 * request is known where the request arrives (the broker's authorizePublish
 * sees the client); it travels with the work in an AsyncLocalStorage, so the
 * VM and job managers, their boot steps and the event log below them need no
 * extra parameter: an event appended while handling alice's `vm.start` names
 * alice, one appended while handling what a guest sent names `vm:<id>`, and
 * anything else (timers, recovery, pools) names mvirtd.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { FULL_ACCESS, type Access } from './roles.js';

export type Actor =
  | { kind: 'user'; user: string; clientId: string }
  | { kind: 'unix'; user: string; clientId: string }
  | { kind: 'anonymous'; clientId: string }
  | { kind: 'guest'; vmId: string }
  /**
   * A request that came over mvirtd's uplink (host/uplink/): the external
   * broker's ACL decided who may publish it; `clientId` is the client its
   * reply topic names (null for fire-and-forget), as claimed by the request.
   */
  | { kind: 'uplink'; broker: string; clientId: string | null }
  | { kind: 'daemon' };

export const DAEMON: Actor = { kind: 'daemon' };

/** The actor column: `user:<name>`, `unix:<name>`, `anonymous`, `uplink[:<client id>]`, `vm:<id>` or `mvirtd`. */
export function actorName(a: Actor): string {
  switch (a.kind) {
    case 'user':
      return `user:${a.user}`;
    case 'unix':
      return `unix:${a.user}`;
    case 'anonymous':
      return 'anonymous';
    case 'guest':
      return `vm:${a.vmId}`;
    case 'uplink':
      return a.clientId === null ? 'uplink' : `uplink:${a.clientId}`;
    case 'daemon':
      return 'mvirtd';
  }
}

/** The client id an actor used, when it is a controller. */
export const actorClientId = (a: Actor): string | null =>
  a.kind === 'user' || a.kind === 'unix' || a.kind === 'anonymous' || a.kind === 'uplink'
    ? a.clientId
    : null;

export interface Acting {
  actor: Actor;
  access: Access;
}

const als = new AsyncLocalStorage<Acting>();
const DAEMON_ACTING: Acting = { actor: DAEMON, access: FULL_ACCESS };

/** Run fn (and everything it starts) as this actor. */
export const runAs = <T>(acting: Acting, fn: () => T): T => als.run(acting, fn);

/** The actor of the work running now; mvirtd when no request or guest message started it. */
export const currentActing = (): Acting => als.getStore() ?? DAEMON_ACTING;

/** The owner label objects created now take: the acting controller's scope, or none. */
export const currentOwner = (): string | null => currentActing().access.scope;
