/**
 * Port forwards (port.forward, port.list, port.close): mvirtd listens on a
 * host TCP address and carries each connection to a port on a guest's
 * loopback over its agent channel (streams.ts), whatever the VM's network.
 *
 * A forward lives as long as the controller connection that opened it: when
 * that MQTT client disconnects (Ctrl-C of `mvirt port-forward`, a crash, a
 * lost network), its forwards close, so none outlives its user unnoticed.
 * port.close ends one sooner; a forward also ends when its VM stops or fails
 * and when mvirtd stops. Requests over the uplink have no connection of
 * their own here: their forwards live until port.close.
 *
 * Who can reach a listener is who can reach the guest's port: a loopback
 * address (the default) is every local user's, as mvirtd's controller port
 * is; any other address (the host's LAN, the internet) needs an admin. The
 * wildcard and the bridge subnet are refused to everyone: bridged guests
 * reach the host there, and one guest must never reach another through a
 * forward.
 */
import { isIP, createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { MvirtError } from '../../protocol/errors.js';
import {
  portNoticeTopic,
  type PortForwardNotice,
  type PortForwardRecord,
} from '../../protocol/ports.js';
import { replyTopicFor } from '../../protocol/topics.js';
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import { encode } from '../../protocol/codec.js';
import { actorClientId, actorName, currentActing } from '../auth/actor.js';
import { inScope, roleAtLeast } from '../auth/roles.js';
import type { Bus } from '../broker/types.js';
import type { AppendEvent } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type { PortStreams } from './streams.js';

/** VM states in which its agent can carry streams. */
const SERVING: readonly VmState[] = ['ready', 'busy'];

interface Forward {
  rec: PortForwardRecord;
  server: Server;
  sockets: Set<Socket>;
  /** The client's reply topic, where connection notices go (null: none). */
  noticeTopic: string | null;
  closed: boolean;
}

export interface PortForwardParams {
  vm: string;
  guestPort: number;
  hostAddress?: string | undefined;
  hostPort?: number | undefined;
}

export type PortForwards = ReturnType<typeof createPortForwards>;

/** 127.0.0.0/8 and ::1 (and ::ffff:127.x). */
export const isLoopback = (ip: string): boolean =>
  /^(::ffff:)?127\./.test(ip) || ip === '::1' || ip === '0:0:0:0:0:0:0:1';
const isWildcard = (ip: string): boolean => /^(0\.0\.0\.0|::|0:0:0:0:0:0:0:0)$/.test(ip);

export function createPortForwards(deps: {
  streams: PortStreams;
  vms: {
    get(ref: string): VmRecord;
    onStateChange(fn: (rec: VmRecord) => void): () => void;
  };
  /** The owner label of a VM (scope checks of port.list and port.close). */
  ownerOfVm: (vmId: string) => string | null;
  events: { append(e: AppendEvent): void };
  bus: Pick<Bus, 'publish'>;
  prefix: string;
  /** Someone subscribes to this topic (notices go out only then). */
  hasSubscriber: (topic: string) => boolean;
  /** Addresses guests can reach on this host (the bridge subnet). */
  guestReachable: (ip: string) => boolean;
  log: MvirtLogger;
}) {
  const log = deps.log.child({ component: 'ports' });
  const forwards = new Map<string, Forward>();

  function notify(f: Forward, n: Omit<PortForwardNotice, 'forwardId'>): void {
    const topic = f.noticeTopic;
    if (!topic || !deps.hasSubscriber(topic)) return;
    const body: PortForwardNotice = { forwardId: f.rec.id, ...n };
    deps.bus.publish(topic, encode(body, 'json'), { qos: 0 }).catch(() => undefined);
  }

  function checkAddress(ip: string): void {
    if (isIP(ip) === 0)
      throw new MvirtError('INVALID_PARAMS', `hostAddress ${ip} is not an IP address`);
    if (isWildcard(ip) || deps.guestReachable(ip))
      throw new MvirtError(
        'PORT_ADDRESS_REFUSED',
        `hostAddress ${ip}: guests reach the host there; name one address of the host that they cannot reach (127.0.0.1, or a LAN address as an admin)`,
        { details: { hostAddress: ip } },
      );
    const { access } = currentActing();
    if (!isLoopback(ip) && !roleAtLeast(access.role, 'admin'))
      throw new MvirtError(
        'FORBIDDEN',
        `a forward on ${ip} is reachable from beyond this host: only an admin may open one (operators: use 127.0.0.1)`,
        { details: { hostAddress: ip, role: access.role } },
      );
  }

  function listen(server: Server, host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      server.once('error', (err: Error & { code?: string }) =>
        reject(
          new MvirtError(
            'PORT_BIND_FAILED',
            `cannot listen on ${host}:${port}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (give another port, or 0 for any free one)' : ''}`,
            { details: { hostAddress: host, hostPort: port, code: err.code } },
          ),
        ),
      );
      server.listen({ host, port, exclusive: true }, () => {
        const a = server.address();
        resolve(typeof a === 'object' && a ? a.port : port);
      });
    });
  }

  function onConnection(f: Forward, sock: Socket): void {
    const peer = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    let vm: VmRecord | undefined;
    try {
      vm = deps.vms.get(f.rec.vmId);
    } catch {
      vm = undefined;
    }
    if (!vm || !SERVING.includes(vm.state)) {
      sock.destroy();
      notify(f, { conn: 0, event: 'close', peer, error: `the VM is ${vm?.state ?? 'gone'}` });
      return;
    }
    const conn = ++f.rec.totalConnections;
    f.rec.connections++;
    f.sockets.add(sock);
    sock.setNoDelay(true);
    notify(f, { conn, event: 'open', peer });
    deps.streams.open(f.rec.vmId, f.rec.guestPort, sock, (end) => {
      f.sockets.delete(sock);
      f.rec.connections--;
      f.rec.bytesToGuest += end.bytesToGuest;
      f.rec.bytesFromGuest += end.bytesFromGuest;
      log.debug({ forward: f.rec.id, conn, peer, ...end }, 'port-forward connection ended');
      notify(f, { conn, event: 'close', peer, ...end });
    });
  }

  function close(f: Forward, why: string, audit: boolean): void {
    if (f.closed) return;
    f.closed = true;
    forwards.delete(f.rec.id);
    f.server.close();
    for (const s of f.sockets) s.destroy();
    notify(f, { conn: 0, event: 'close', peer: `${f.rec.address}:${f.rec.port}`, error: why });
    deps.events.append({
      level: audit ? 'audit' : 'info',
      component: 'port',
      message: `port forward ${f.rec.id} ${f.rec.address}:${f.rec.port} → ${f.rec.vmName}:${f.rec.guestPort} closed (${why})`,
      objects: [f.rec.id, f.rec.vmId],
    });
  }

  const unlisten = deps.vms.onStateChange((rec) => {
    if (rec.state !== 'stopped' && rec.state !== 'failed') return;
    for (const f of [...forwards.values()])
      if (f.rec.vmId === rec.id) close(f, `VM ${rec.name} is ${rec.state}`, false);
  });

  const visible = (f: Forward): boolean =>
    inScope(currentActing().access, deps.ownerOfVm(f.rec.vmId));

  const find = (id: string): Forward => {
    const f = forwards.get(id);
    if (!f || !visible(f))
      throw new MvirtError(
        'PORT_FORWARD_NOT_FOUND',
        `no port forward ${id} (port.list shows them)`,
      );
    return f;
  };

  return {
    /** The checks of port.forward, without listening (its dry run). */
    check(p: PortForwardParams): { vm: VmRecord; address: string } {
      const vm = deps.vms.get(p.vm);
      const address = p.hostAddress ?? '127.0.0.1';
      checkAddress(address);
      if (!SERVING.includes(vm.state))
        throw new MvirtError(
          'VM_BAD_STATE',
          `VM ${vm.name} is ${vm.state}: a forward needs its agent (ready or busy); start it first`,
          { details: { state: vm.state } },
        );
      return { vm, address };
    },

    async forward(p: PortForwardParams): Promise<PortForwardRecord> {
      const { vm, address } = this.check(p);
      const acting = currentActing();
      const clientId = actorClientId(acting.actor);
      const id = `pf-${randomBytes(6).toString('hex')}`;
      const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
      const port = await listen(server, address, p.hostPort ?? 0);
      // Uplink clients are not connected here: they close their forwards themselves.
      const local = acting.actor.kind !== 'uplink' ? clientId : null;
      const f: Forward = {
        rec: {
          id,
          vmId: vm.id,
          vmName: vm.name,
          guestPort: p.guestPort,
          address,
          port,
          actor: actorName(acting.actor),
          clientId: local,
          createdAt: Date.now(),
          connections: 0,
          totalConnections: 0,
          bytesToGuest: 0,
          bytesFromGuest: 0,
        },
        server,
        sockets: new Set(),
        noticeTopic: local ? portNoticeTopic(replyTopicFor(deps.prefix, local), id) : null,
        closed: false,
      };
      forwards.set(id, f);
      server.on('connection', (sock: Socket) => onConnection(f, sock));
      server.on('error', (err) => log.warn({ forward: id, err: err.message }, 'listener error'));
      deps.events.append({
        level: 'audit',
        component: 'port',
        message: `port forward ${id}: ${address}:${port} → ${vm.name}:${p.guestPort} opened`,
        objects: [id, vm.id],
        data: { address, port, guestPort: p.guestPort, clientId: local },
      });
      return { ...f.rec };
    },

    list(): PortForwardRecord[] {
      return [...forwards.values()].filter(visible).map((f) => ({ ...f.rec }));
    },

    /** port.close: the record as it was when closed. */
    close(id: string): PortForwardRecord {
      const f = find(id);
      close(f, `closed by ${actorName(currentActing().actor)}`, true);
      return { ...f.rec };
    },
    /** port.close's dry run. */
    get: (id: string): PortForwardRecord => ({ ...find(id).rec }),

    /** A controller's MQTT client disconnected: its forwards end with it. */
    clientGone(clientId: string): void {
      for (const f of [...forwards.values()])
        if (f.rec.clientId === clientId) close(f, `client ${clientId} disconnected`, false);
    },

    /** mvirtd stops. */
    closeAll(): void {
      unlisten();
      for (const f of [...forwards.values()]) close(f, 'mvirtd is stopping', false);
    },
  };
}
