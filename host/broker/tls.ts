/**
 * TLS for the controller-facing listeners (MQTT over TCP, WebSocket, HTTP):
 * one certificate and key (PEM files), optionally a client CA whose
 * certificates every client must then present. The files are read at start
 * and again on `reload()` (mvirtd does that on SIGHUP): every server made from
 * this context gets the new one through `setSecureContext`, so renewed
 * certificates apply to new connections without a restart; connections
 * already open keep theirs. A reload that fails (missing file, key that does
 * not match) keeps the old context and says why.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { MvirtError } from '../../protocol/errors.js';

export interface TlsFiles {
  cert: string;
  key: string;
  /** Client certificates must be signed by this CA (mutual TLS). */
  clientCa?: string;
}

export interface TlsContext {
  readonly files: TlsFiles;
  /** Options for tls.createServer / https.createServer. */
  serverOptions(): tls.TlsOptions;
  /** Register a server made with serverOptions() for reloads. */
  track(server: tls.Server): void;
  untrack(server: tls.Server): void;
  /** Read the files again and hand the new context to every tracked server. */
  reload(): void;
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new MvirtError(
      'CONFIG_INVALID',
      `cannot read the TLS ${what} ${path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

function load(files: TlsFiles): tls.SecureContextOptions {
  const o: tls.SecureContextOptions = {
    cert: read(files.cert, 'certificate'),
    key: read(files.key, 'key'),
    ...(files.clientCa ? { ca: read(files.clientCa, 'client CA') } : {}),
    minVersion: 'TLSv1.2',
  };
  try {
    tls.createSecureContext(o); // a key that does not match its certificate fails here
  } catch (err) {
    throw new MvirtError(
      'CONFIG_INVALID',
      `TLS certificate ${files.cert} and key ${files.key} do not make a context: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return o;
}

export function createTlsContext(files: TlsFiles): TlsContext {
  let current = load(files);
  const servers = new Set<tls.Server>();
  return {
    files,
    serverOptions: () => ({
      ...current,
      ...(files.clientCa ? { requestCert: true, rejectUnauthorized: true } : {}),
    }),
    track: (s) => servers.add(s),
    untrack: (s) => servers.delete(s),
    reload() {
      const next = load(files);
      current = next;
      for (const s of servers) s.setSecureContext(next);
    },
  };
}
