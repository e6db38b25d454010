/**
 * Who reaches the host: the guest network (set up first: the guest listener
 * binds to the bridge address), the controllers' users and the dashboard's
 * session tokens, one TLS context, the gate that keeps controller and HTTP
 * listeners from answering a guest network, and the broker that checks them
 * all. The broker's close joins `cleanup`.
 */
import { createBroker } from '../broker/index.js';
import { createTlsContext } from '../broker/tls.js';
import { hashesOf, loadUserEntries } from '../broker/users.js';
import { createSessionTokens } from '../http/sessions.js';
import type { MvirtLogger } from '../log.js';
import { createNetwork } from '../network/index.js';
import { createNetDevices } from '../network/iproute.js';
import { createPasst } from '../network/passt.js';
import { createAgentTokens } from '../network/tokens.js';
import type { Store } from '../store/index.js';
import { guestNetworkGate } from './exposure.js';
import type { DaemonOptions } from './options.js';

/** How long a dashboard's MQTT token is accepted for new connections. */
const SESSION_TTL_MS = 12 * 3600_000;

export async function openAccess(d: {
  opts: DaemonOptions;
  store: Store;
  /** The host's topic root (protocol/topics.ts). */
  root: string;
  vmDir: string;
  cleanup: (() => Promise<void> | void)[];
  log: MvirtLogger;
}) {
  const { opts, store, root, vmDir, cleanup, log } = d;
  const network = createNetwork({
    repo: store.network,
    devices: createNetDevices(log.child({ component: 'network' })),
    tokens: createAgentTokens(store.network),
    options: {
      defaultMode: opts.network,
      bridge: opts.bridge || null,
      subnet: opts.subnet,
      nat: opts.nat,
      guestPort: opts.guestPort,
      dns: opts.guestDns,
      vmDir,
    },
    passt: createPasst({ log: log.child({ component: 'network' }) }),
    log,
  });
  // The bridge address must exist before the guest listener binds to it.
  await network.setup({ optional: !opts.bridgeRequired });
  // Dashboard pages log in once over HTTP and use a token as MQTT password.
  const sessions = createSessionTokens({ ttlMs: SESSION_TTL_MS });
  // Read once: MQTT and the HTTP listener check the same users.
  const userEntries = opts.usersFile ? loadUserEntries(opts.usersFile) : new Map();
  const users = hashesOf(userEntries);
  // One TLS context for MQTT TCP, WebSocket and HTTP: one SIGHUP renews all three.
  const tls = opts.tls ? createTlsContext(opts.tls) : null;
  // Controller and HTTP listeners never answer a guest network, whatever they are bound to.
  const gate = guestNetworkGate(network);
  const broker = await createBroker(
    {
      root,
      tls,
      gate,
      listen: opts.listen,
      ws: opts.wsListen,
      unixPath: opts.unixSocket,
      dataDir: opts.dataDir,
      allowAnonymous: opts.allowAnonymous,
      guestListen: network.guestListen ?? false,
      verifyAgentToken: (vmId, token) => network.verifyToken(vmId, token),
      verifyControllerToken: sessions.verify,
      users: [...userEntries.values()],
      ownerOf: (kind, id) => store.owners.get(kind, id),
    },
    log.child({ component: 'broker' }),
  );
  cleanup.unshift(() => broker.close());
  return { network, sessions, users, tls, gate, broker };
}
