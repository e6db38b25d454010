/**
 * A JSON REST client over a unix socket: the control API of cloud-hypervisor
 * (`--api-socket`) and of Firecracker (`--api-sock`) alike. node:http with a
 * keep-alive agent of one socket: both VMMs serve one request at a time, and
 * reusing the connection saves a connect per call (bench/backends.ts measures
 * what a call costs over a raw request on the same socket).
 */
import http from 'node:http';
import { MvirtError } from '../../protocol/errors.js';
import { connectUnixWithRetry } from './unix-socket.js';

export type HttpMethod = 'GET' | 'PUT' | 'PATCH';

export interface RestReply {
  status: number;
  /** The parsed JSON body, or null when there was none. */
  body: unknown;
}

export interface RestClient {
  /** One request; resolves with any status. Network failures reject with HYPERVISOR_ERROR. */
  request(method: HttpMethod, path: string, body?: unknown): Promise<RestReply>;
  /** A request that must succeed (2xx); the VMM's error text goes into the MvirtError. */
  call(method: HttpMethod, path: string, body?: unknown): Promise<unknown>;
  close(): void;
}

export interface RestOptions {
  socketPath: string;
  /** Prepended to every path (cloud-hypervisor: `/api/v1`). */
  base?: string;
  /** The VMM's name, for error messages. */
  name: string;
  timeoutMs?: number;
}

/** The VMM's own error text: cloud-hypervisor answers plain text, Firecracker `{fault_message}`. */
function faultOf(body: unknown, raw: string): string {
  if (body && typeof body === 'object' && 'fault_message' in body)
    return String((body as { fault_message: unknown }).fault_message);
  return raw.trim().slice(0, 500);
}

export function createRestClient(opts: RestOptions): RestClient {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const base = opts.base ?? '';
  const timeoutMs = opts.timeoutMs ?? 30_000;

  function request(method: HttpMethod, path: string, body?: unknown): Promise<RestReply> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          socketPath: opts.socketPath,
          agent,
          method,
          path: base + path,
          headers: {
            Accept: 'application/json',
            ...(payload
              ? { 'Content-Type': 'application/json', 'Content-Length': payload.length }
              : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = null;
            if (raw.trim() !== '') {
              try {
                parsed = JSON.parse(raw) as unknown;
              } catch {
                parsed = raw;
              }
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on('timeout', () =>
        req.destroy(
          new MvirtError(
            'TIMEOUT',
            `${opts.name} API: ${method} ${path} took over ${timeoutMs} ms`,
          ),
        ),
      );
      req.on('error', (err) =>
        reject(
          err instanceof MvirtError
            ? err
            : new MvirtError(
                'HYPERVISOR_ERROR',
                `${opts.name} API: ${method} ${path}: ${err.message}`,
                {
                  cause: err,
                },
              ),
        ),
      );
      req.end(payload);
    });
  }

  return {
    request,
    async call(method, path, body) {
      const r = await request(method, path, body);
      if (r.status >= 200 && r.status < 300) return r.body;
      const text = faultOf(r.body, typeof r.body === 'string' ? r.body : JSON.stringify(r.body));
      throw new MvirtError(
        'HYPERVISOR_ERROR',
        `${opts.name} refused ${method} ${path} (HTTP ${r.status})${text ? `: ${text}` : ''}`,
        { details: { status: r.status } },
      );
    },
    close: () => agent.destroy(),
  };
}

/**
 * Wait until the VMM's API socket accepts connections (it is created some
 * milliseconds after exec); aborted when the process dies meanwhile.
 */
export async function waitForApi(
  socketPath: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<void> {
  const s = await connectUnixWithRetry(socketPath, { timeoutMs, ...(signal ? { signal } : {}) });
  s.destroy();
}
