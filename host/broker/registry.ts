/**
 * What the broker knows about each connection, kept beside aedes' objects
 * rather than on them: the transport a stream came in on (set when the stream
 * is admitted, before aedes sees a byte) and, once authenticated, the
 * principal its client acts as. WeakMaps: nothing to clean up on close.
 */
import type { Principal } from './acl.js';
import type { PeerCred } from './peer.js';

export type Transport = 'tcp' | 'unix' | 'ws' | 'guest' | 'agent-channel';

export interface ConnInfo {
  transport: Transport;
  /** Peer address for logs (null for unix sockets and agent channels). */
  remote: string | null;
  /** The unix socket: the only place anonymous controllers may be allowed (loopback is not an identity). */
  local: boolean;
  /** Unix socket: who is on the other end (looked up while CONNECT is in flight). */
  peer?: Promise<PeerCred | null>;
  /** Set for agent channels: the VM this stream belongs to. */
  vmId?: string;
}

/** Which identity (acl.ts identityOf) a client id belongs to, and since when. */
export interface Binding {
  identity: string;
  /** The client that holds it now (null once it left a persistent session behind). */
  client: object | null;
  /** A session with clean=false: the id stays bound after the client leaves. */
  persistent: boolean;
}

export interface Registry {
  /** Keyed by the guarded stream aedes holds as `client.conn`. */
  readonly conns: WeakMap<object, ConnInfo>;
  /** Keyed by the aedes client. */
  readonly principals: WeakMap<object, Principal>;
  /**
   * Client ids bound to the identity that connected with them: another user
   * can neither take the id over (which would kick the holder off) nor resume
   * its session, nor read its reply namespace.
   */
  readonly bindings: Map<string, Binding>;
  /**
   * Who published a message, keyed by its payload Buffer: aedes hands the
   * daemon's in-process subscribers the same Buffer its authorizePublish saw
   * (aedes-packet copies the reference), but not the client. This carries the
   * publisher from the hook to the API handler (bus.ts).
   */
  readonly senders: WeakMap<object, Principal>;
}

export const createRegistry = (): Registry => ({
  conns: new WeakMap(),
  principals: new WeakMap(),
  bindings: new Map(),
  senders: new WeakMap(),
});

export function isLoopback(address: string | undefined | null): boolean {
  if (!address) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}
