/**
 * The broker's listeners, one small function each. They only accept streams
 * and hand them on (`onStream`); who the peer is and what it may do is decided
 * by the authenticate/authorize hooks.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { formatHostPort, type HostPort } from './options.js';
import type { TlsContext } from './tls.js';

export interface Listener {
  readonly address: string;
  close(): Promise<void>;
}

type OnSocket = (socket: net.Socket) => void;

/**
 * Connections a listener turns away before a byte is read: controller and
 * HTTP listeners refuse peers on a guest network (the bridge subnet), even
 * when an operator binds them to 0.0.0.0. Returns why, or null to accept.
 */
export type Gate = (remote: string | undefined, local: string | undefined) => string | null;

/** Apply a gate to a server's raw TCP connections (before TLS and HTTP see them). */
function gateConnections(server: net.Server, gate: Gate | undefined, onRefused: RefusedLog): void {
  if (!gate) return;
  server.prependListener('connection', (socket: net.Socket) => {
    const why = gate(socket.remoteAddress, socket.localAddress);
    if (why === null) return;
    onRefused(socket.remoteAddress ?? null, why);
    socket.destroy();
  });
}

export type RefusedLog = (remote: string | null, why: string) => void;

/** TLS or plain, and an optional gate, for every TCP-based listener. */
export interface TcpListenOptions {
  tls?: TlsContext | null;
  gate?: Gate;
  onRefused?: RefusedLog;
}

function closeServer(server: net.Server | http.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function listen(server: net.Server, arg: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(arg, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function boundAddress(server: net.Server): HostPort {
  const a = server.address() as net.AddressInfo;
  return { host: a.address, port: a.port };
}

/** A TCP listener (controllers on --listen, agents on the guest address), plain or TLS. */
export async function listenTcp(
  at: HostPort,
  maxConnections: number,
  onSocket: OnSocket,
  o: TcpListenOptions = {},
): Promise<Listener> {
  // noDelay: RPC is request/response with small packets; Nagle plus delayed
  // ACK would add up to 40 ms per round trip.
  const ctx = o.tls ?? null;
  const server = ctx
    ? tls.createServer({ ...ctx.serverOptions(), noDelay: true }, onSocket)
    : net.createServer({ noDelay: true }, onSocket);
  if (ctx) {
    ctx.track(server as tls.Server);
    // A failed handshake (plaintext, unknown CA) is the client's problem: log it, keep serving.
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) =>
      o.onRefused?.(socket.remoteAddress ?? null, `TLS handshake failed: ${err.message}`),
    );
  }
  gateConnections(server, o.gate, o.onRefused ?? (() => undefined));
  server.maxConnections = maxConnections;
  await listen(server, { host: at.host, port: at.port });
  return {
    address: formatHostPort(boundAddress(server)),
    close: async () => {
      if (ctx) ctx.untrack(server as tls.Server);
      await closeServer(server);
    },
  };
}

/** Remove a socket file left by a daemon that died, but never steal a live one. */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`${path} is in use by another process (is mvirtd already running?)`);
  unlinkSync(path);
}

/** The unix socket in the data folder, mode 0660 (owner and group). */
export async function listenUnix(
  path: string,
  maxConnections: number,
  onSocket: OnSocket,
): Promise<Listener> {
  await clearStaleSocket(path);
  const server = net.createServer(onSocket);
  server.maxConnections = maxConnections;
  await listen(server, { path });
  // The socket exists with the umask's mode for a moment; the data folder
  // (0750 or stricter) is what really keeps other users out.
  chmodSync(path, 0o660);
  return {
    address: path,
    close: async () => {
      await closeServer(server);
      try {
        unlinkSync(path);
      } catch {
        // already gone
      }
    },
  };
}

/** The WebSocket subprotocol MQTT clients offer: `mqtt` (`mqttv3.1` for old ones); none other is accepted. */
export const mqttSubprotocol = (protocols: Set<string>): string | false =>
  protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false;

/**
 * MQTT over WebSocket on its own port. Browsers offer the subprotocol `mqtt`
 * (`mqttv3.1` for old clients); ws buffers a whole message before handing it
 * on, so its maxPayload is the WebSocket-level size cap.
 */
export async function listenWs(
  at: HostPort,
  wsPath: string,
  maxPayload: number,
  maxConnections: number,
  onStream: (stream: Duplex, req: IncomingMessage) => void,
  o: TcpListenOptions = {},
): Promise<Listener> {
  const answer = (_req: IncomingMessage, res: http.ServerResponse): void => {
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' });
    res.end('MQTT over WebSocket: connect with subprotocol "mqtt"\n');
  };
  const ctx = o.tls ?? null;
  const server = ctx ? https.createServer(ctx.serverOptions(), answer) : http.createServer(answer);
  if (ctx) {
    ctx.track(server as https.Server);
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) =>
      o.onRefused?.(socket.remoteAddress ?? null, `TLS handshake failed: ${err.message}`),
    );
  }
  gateConnections(server, o.gate, o.onRefused ?? (() => undefined));
  server.maxConnections = maxConnections;
  const wss = new WebSocketServer({
    server,
    path: wsPath,
    maxPayload,
    handleProtocols: mqttSubprotocol,
  });
  wss.on('connection', (ws, req) => {
    onStream(createWebSocketStream(ws), req);
  });
  await listen(server, { host: at.host, port: at.port });
  const a = boundAddress(server);
  return {
    address: `${ctx ? 'wss' : 'ws'}://${formatHostPort(a)}${wsPath}`,
    close: async () => {
      if (ctx) ctx.untrack(server as https.Server);
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await closeServer(server);
    },
  };
}
