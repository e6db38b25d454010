/**
 * aedes `preConnect` and `authenticate`: who a new client is.
 *
 *  - agent channel: the stream is the VM. Credentials are ignored; the client
 *    id must be `agent-<vmId>` (an empty id is given that one in preConnect);
 *    any other id is refused (CONNACK 2), so a guest cannot pose as another
 *    VM's session or take over a controller's.
 *  - guest TCP: username = VM id, password = that VM's token, checked by the
 *    injected verifier; then the same rules as an agent channel.
 *  - controllers (TCP, unix, WebSocket): a user from the users file with a
 *    scrypt-hashed password (over WebSocket also a session token the HTTP
 *    listener minted for that user after checking the password), or
 *    anonymous where `allowAnonymous` is set and the connection came over the
 *    unix socket. Loopback TCP is not an identity (QEMU's slirp and every
 *    local user reach it): TCP and WebSocket controllers always log in. On the
 *    unix socket the peer's credentials name the local user in the log.
 * Every refusal is logged at warn with the client id and the reason.
 */
import type { Client, ConnectPacket } from 'aedes';
import { nameProblem } from '../../protocol/topics.js';
import type { MvirtLogger } from '../log.js';
import {
  RESERVED_CLIENT_ID_PREFIX,
  agentClientId,
  agentPublishProblem,
  controllerPublishProblem,
  type Principal,
} from './acl.js';
import { FULL_ACCESS, type Access } from '../auth/roles.js';
import type { LoginLimiter } from './login-limit.js';
import { checkUser } from './passwords.js';
import { bindClientId } from './sessions.js';
import type { ConnInfo, Registry } from './registry.js';
import { clientIdProblem } from './validate.js';

// CONNACK return codes of MQTT 3.1.1 (aedes' AuthErrorCode is a const enum).
const IDENTIFIER_REJECTED = 2;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

type AuthError = Error & { returnCode: number };
const refusal = (returnCode: number, message: string): AuthError =>
  Object.assign(new Error(message), { returnCode });

interface Deps {
  root: string;
  registry: Registry;
  users: Map<string, string>;
  allowAnonymous: boolean;
  verifyAgentToken: ((vmId: string, token: string) => boolean) | null;
  verifyControllerToken?: ((username: string, token: string) => boolean) | null;
  /** A user's role and scope (users.ts); default: admin, unscoped. */
  accessOf?: (user: string) => Access;
  /** Failed-login limits per source and user (login-limit.ts). */
  limiter?: LoginLimiter;
  log: MvirtLogger;
}

type Will = { topic: string; retain?: boolean } | null | undefined;

/** Give an agent that sent an empty client id the one it is allowed to have. */
export function createPreConnect(registry: Registry) {
  return function preConnect(
    client: Client,
    packet: ConnectPacket,
    callback: (error: Error | null, success: boolean) => void,
  ): void {
    const ci = registry.conns.get(client.conn);
    if (!packet.clientId) {
      if (ci?.transport === 'agent-channel' && ci.vmId) packet.clientId = agentClientId(ci.vmId);
      else if (ci?.transport === 'guest' && packet.username && !nameProblem(packet.username))
        packet.clientId = agentClientId(packet.username);
    }
    callback(null, true);
  };
}

export function createAuthenticate(d: Deps) {
  const controller = (client: Client, user: string): Principal => ({
    role: 'controller',
    user,
    access: d.accessOf?.(user) ?? FULL_ACCESS,
    clientId: client.id,
  });

  function willProblem(p: Principal, will: Will): string | null {
    if (!will) return null;
    const retain = will.retain === true;
    const bad =
      p.role === 'agent'
        ? agentPublishProblem(d.root, p.vmId, will.topic, retain)
        : controllerPublishProblem(d.root, will.topic, retain);
    return bad === null ? null : `will refused: ${bad}`;
  }

  /** Checks shared by both agent transports, once the VM id is known. */
  function agentProblem(client: Client, vmId: string): AuthError | null {
    if (client.id !== agentClientId(vmId))
      return refusal(
        IDENTIFIER_REJECTED,
        `an agent of ${vmId} must use client id ${agentClientId(vmId)}`,
      );
    const w = willProblem({ role: 'agent', vmId }, (client as unknown as { _will: Will })._will);
    return w === null ? null : refusal(NOT_AUTHORIZED, w);
  }

  async function authenticateAgentTcp(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
  ): Promise<Principal> {
    if (!username || nameProblem(username) !== null || !password)
      throw refusal(
        BAD_USERNAME_OR_PASSWORD,
        'guest listener: username must be a VM id and password its token',
      );
    if (!d.verifyAgentToken?.(username, password.toString('utf8')))
      throw refusal(BAD_USERNAME_OR_PASSWORD, `bad token for VM ${username}`);
    const bad = agentProblem(client, username);
    if (bad) throw bad;
    return { role: 'agent', vmId: username };
  }

  async function authenticateController(
    client: Client,
    ci: ConnInfo,
    username: string | undefined,
    password: Buffer | undefined,
  ): Promise<Principal> {
    const idBad = clientIdProblem(client.id);
    if (idBad !== null) throw refusal(IDENTIFIER_REJECTED, idBad);
    if (client.id.startsWith(RESERVED_CLIENT_ID_PREFIX))
      throw refusal(
        IDENTIFIER_REJECTED,
        `client ids starting with ${RESERVED_CLIENT_ID_PREFIX} are reserved for agents`,
      );
    let principal: Principal;
    if (
      username !== undefined &&
      ci.transport === 'ws' &&
      password !== undefined &&
      d.verifyControllerToken?.(username, password.toString('utf8'))
    ) {
      // A dashboard session token the HTTP listener minted for this user.
      principal = controller(client, username);
    } else if (username !== undefined) {
      const limited = d.limiter?.check(ci.remote, username) ?? null;
      if (limited !== null) {
        await new Promise((resolve) => setTimeout(resolve, d.limiter!.penaltyMs).unref());
        throw refusal(NOT_AUTHORIZED, limited);
      }
      if (!(await checkUser(d.users, username, password?.toString('utf8') ?? ''))) {
        d.limiter?.failed(ci.remote, username);
        throw refusal(
          BAD_USERNAME_OR_PASSWORD,
          `bad user name or password for ${JSON.stringify(username)}`,
        );
      }
      principal = controller(client, username);
    } else if (d.allowAnonymous && ci.transport === 'unix') {
      principal = { role: 'controller', user: null, access: FULL_ACCESS, clientId: client.id };
    } else {
      throw refusal(
        NOT_AUTHORIZED,
        d.allowAnonymous
          ? 'authentication required: anonymous access only over the unix socket'
          : 'authentication required',
      );
    }
    if (ci.peer && principal.role === 'controller') {
      principal.local = await ci.peer;
      // An anonymous controller on the unix socket is the local user its peer credentials name.
      if (principal.user === null && principal.local?.user)
        principal.unixUser = principal.local.user;
    }
    const w = willProblem(principal, (client as unknown as { _will: Will })._will);
    if (w !== null) throw refusal(NOT_AUTHORIZED, w);
    const taken =
      principal.role === 'controller' ? bindClientId(d.registry, client, principal) : null;
    if (taken !== null) throw refusal(IDENTIFIER_REJECTED, taken);
    return principal;
  }

  async function decide(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
  ): Promise<Principal> {
    const ci = d.registry.conns.get(client.conn);
    if (!ci) throw refusal(NOT_AUTHORIZED, 'unknown connection');
    if (ci.transport === 'agent-channel') {
      const bad = agentProblem(client, ci.vmId!);
      if (bad) throw bad;
      return { role: 'agent', vmId: ci.vmId! };
    }
    if (ci.transport === 'guest') return authenticateAgentTcp(client, username, password);
    return authenticateController(client, ci, username, password);
  }

  return function authenticate(
    client: Client,
    username: Readonly<string | undefined>,
    password: Readonly<Buffer | undefined>,
    done: (error: AuthError | null, success: boolean | null) => void,
  ): void {
    decide(client, username, password).then(
      (principal) => {
        d.registry.principals.set(client, principal);
        const ci = d.registry.conns.get(client.conn);
        const entry = {
          clientId: client.id,
          transport: ci?.transport,
          remote: ci?.remote,
          principal,
        };
        // Controllers are audited (who may act); agents are routine.
        if (principal.role === 'controller') d.log.audit(entry, 'controller connected');
        else d.log.info(entry, 'client connected');
        done(null, true);
      },
      (err: unknown) => {
        const e =
          err instanceof Error && 'returnCode' in err
            ? (err as AuthError)
            : refusal(NOT_AUTHORIZED, String(err));
        const ci = d.registry.conns.get(client.conn);
        d.log.warn(
          {
            clientId: client.id,
            transport: ci?.transport,
            remote: ci?.remote,
            username,
            reason: e.message,
          },
          'connection refused',
        );
        done(e, false);
      },
    );
  };
}
