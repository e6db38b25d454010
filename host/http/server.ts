/**
 * mvirtd's HTTP listener (--http): `/metrics` for Prometheus, the dashboard
 * (its page and bundled assets), `/session` (the page's MQTT login) and MQTT
 * over WebSocket on `/mqtt`, handed to the broker like any WebSocket
 * controller. Every HTTP request passes the same authentication rules as MQTT
 * (auth.ts); the WebSocket upgrade does not need them, because MQTT CONNECT
 * authenticates the connection itself.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { HTTP_PATHS, type DashboardSession } from '../../protocol/http.js';
import { mqttSubprotocol, type Gate } from '../broker/listeners.js';
import type { TlsContext } from '../broker/tls.js';
import { formatHostPort, type HostPort } from '../broker/options.js';
import type { Broker } from '../broker/types.js';
import type { MvirtLogger } from '../log.js';
import type { HttpAuth } from './auth.js';
import type { SessionTokens } from './sessions.js';

export interface Asset {
  contentType: string;
  body: Buffer;
  /** The body gzipped once at load (the bundle is mostly zod and mqtt.js: ~4× smaller). */
  gzip?: Buffer;
  /** A strong validator of the body, for conditional requests (If-None-Match). */
  etag?: string;
}

/** Dashboard files by URL path (`/`, `/assets/dashboard.js`, …). */
export type Assets = ReadonlyMap<string, Asset>;

export interface HttpServerDeps {
  listen: HostPort;
  auth: HttpAuth;
  sessions: SessionTokens;
  hostId: string;
  root: string;
  metrics: () => Promise<{ contentType: string; body: string }>;
  /** Resolves once the dashboard is built (or rejects with why it cannot be). */
  assets: () => Promise<Assets>;
  broker: Pick<Broker, 'attachWebSocket' | 'wsMaxPayload'>;
  /** HTTPS (and WSS on /mqtt) with this context; plain HTTP without. */
  tls?: TlsContext | null;
  /** Connections to turn away before HTTP sees them (peers on a guest network). */
  gate?: Gate;
  log: MvirtLogger;
}

export interface HttpServer {
  /** `http://host:port` (or `https://`) actually bound. */
  readonly url: string;
  close(): Promise<void>;
}

// The page loads only its own bundled code and talks only to its own origin
// (uPlot sets style attributes, hence 'unsafe-inline' for styles alone).
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

function send(
  res: ServerResponse,
  status: number,
  body: string | Buffer,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'x-content-type-options': 'nosniff',
    'content-length': String(Buffer.byteLength(body)),
    ...headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

export async function startHttpServer(d: HttpServerDeps): Promise<HttpServer> {
  const log = d.log.child({ component: 'http' });

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(res, 405, 'method not allowed\n', { allow: 'GET, HEAD' });
    }
    const who = await d.auth.check(req);
    if (!who) {
      log.warn({ remote: req.socket.remoteAddress, path: url.pathname }, 'HTTP request refused');
      return send(res, 401, 'authentication required\n', {
        'www-authenticate': 'Basic realm="mvirt", charset="UTF-8"',
      });
    }
    if (url.pathname === HTTP_PATHS.metrics) {
      const m = await d.metrics();
      return send(res, 200, m.body, { 'content-type': m.contentType, 'cache-control': 'no-store' });
    }
    if (url.pathname === HTTP_PATHS.session) {
      const tok = who.user !== null ? d.sessions.mint(who.user) : null;
      const body: DashboardSession = {
        hostId: d.hostId,
        root: d.root,
        mqttPath: HTTP_PATHS.mqtt,
        username: who.user,
        password: tok?.token ?? null,
        expiresAt: tok?.expiresAt ?? null,
      };
      return send(res, 200, JSON.stringify(body), {
        'content-type': 'application/json',
        'cache-control': 'no-store',
      });
    }
    const path = url.pathname === '/index.html' ? '/' : url.pathname;
    if (path === HTTP_PATHS.dashboard || path.startsWith(HTTP_PATHS.assets)) {
      const asset = (await d.assets()).get(path);
      if (!asset) return send(res, 404, 'not found\n');
      // 304 lets the browser reuse what it has, compiled code included.
      if (asset.etag !== undefined && req.headers['if-none-match'] === asset.etag) {
        res.writeHead(304, {
          etag: asset.etag,
          'cache-control': 'no-cache',
          vary: 'accept-encoding',
        });
        res.end();
        return;
      }
      const gz = asset.gzip !== undefined && /\bgzip\b/.test(req.headers['accept-encoding'] ?? '');
      return send(res, 200, gz ? asset.gzip! : asset.body, {
        'content-type': asset.contentType,
        'content-security-policy': CSP,
        'cache-control': 'no-cache',
        vary: 'accept-encoding',
        ...(asset.etag !== undefined ? { etag: asset.etag } : {}),
        ...(gz ? { 'content-encoding': 'gzip' } : {}),
      });
    }
    if (url.pathname === '/favicon.ico') return send(res, 204, '');
    return send(res, 404, 'not found\n');
  }

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    route(req, res).catch((err: unknown) => {
      log.error({ err, url: req.url }, 'HTTP request failed');
      if (!res.headersSent) send(res, 500, 'internal error; see the mvirtd log\n');
      else res.destroy();
    });
  };
  const ctx = d.tls ?? null;
  const server = ctx
    ? https.createServer(ctx.serverOptions(), handler)
    : http.createServer(handler);
  if (ctx) {
    ctx.track(server as https.Server);
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) =>
      log.warn({ remote: socket.remoteAddress, reason: err.message }, 'TLS handshake failed'),
    );
  }
  const gate = d.gate;
  if (gate) {
    server.prependListener('connection', (socket: net.Socket) => {
      const why = gate(socket.remoteAddress, socket.localAddress);
      if (why === null) return;
      log.warn({ remote: socket.remoteAddress, reason: why }, 'HTTP connection refused');
      socket.destroy();
    });
  }

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: d.broker.wsMaxPayload,
    handleProtocols: mqttSubprotocol,
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== HTTP_PATHS.mqtt) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      d.broker.attachWebSocket(createWebSocketStream(ws), req.socket.remoteAddress);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: d.listen.host, port: d.listen.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as net.AddressInfo;
  const url = `${ctx ? 'https' : 'http'}://${formatHostPort({ host: a.address, port: a.port })}`;
  log.info({ url }, 'HTTP listening: /metrics, the dashboard, MQTT over WebSocket on /mqtt');

  return {
    url,
    async close() {
      if (ctx) ctx.untrack(server as https.Server);
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
