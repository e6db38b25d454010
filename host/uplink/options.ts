/**
 * `mvirtd --uplink mqtt[s]://HOST:PORT` and its companions. The password is
 * read from a file (`--uplink-credentials`), never taken from the command
 * line, where every local user could read it in /proc/<pid>/cmdline. Every
 * problem is a CONFIG_INVALID error naming the option and what to do.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import { ROLES, type Access, type Role } from '../auth/roles.js';
import { nameProblem } from '../../protocol/topics.js';

export interface UplinkOptions {
  /** `mqtt://host:port` or `mqtts://host:port`. */
  url: string;
  /** `host:port`, for logs, system.info and the actor of uplink requests. */
  broker: string;
  username: string | null;
  password: string | null;
  /** PEM text of the CA that signed the broker's certificate (mqtts only); null: the system's CAs. */
  ca: string | null;
  /** What every request arriving over the uplink may do (docs/security.md, "Uplink"). */
  access: Access;
  /** MQTT keepalive: the broker sends the last will after 1.5 × this without a packet. */
  keepaliveS: number;
  /** Non-retained messages held while the link is down; the oldest is dropped beyond it. */
  bufferMessages: number;
  /** Retained topics remembered for republishing after a reconnect. */
  retainedTopics: number;
}

export const UPLINK_USAGE = `  --uplink mqtt[s]://HOST:PORT
                            also serve the controller API on this external broker
                            (docs/fleet.md); agents stay on the embedded broker
  --uplink-credentials FILE JSON {"username","password"} for the uplink (mode 0600;
                            never a password on the command line)
  --uplink-ca FILE          CA certificate (PEM) of the uplink broker (mqtts)
  --uplink-role ROLE        what requests arriving over the uplink may do: viewer,
                            operator or admin (default operator; docs/security.md)
  --uplink-scope LABEL      confine uplink requests to objects with this owner label
  --uplink-keepalive-s N    MQTT keepalive of the link (default 30): the broker declares
                            this host offline (its last will) 1.5 × N after it went silent
  --uplink-buffer N         messages held while the link is down (default 10000);
                            beyond it the oldest are dropped and counted
`;

const Credentials = z.strictObject({
  username: z.string().min(1).max(256),
  password: z.string().min(1).max(4096),
});

function bad(option: string, problem: string): MvirtError {
  return new MvirtError('CONFIG_INVALID', `--${option}: ${problem}`, { details: { option } });
}

function readText(file: string, option: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw bad(option, `cannot read ${what} ${file} (${code}); check the path and its permissions`);
  }
}

function credentialsOf(file: string): { username: string; password: string } {
  const text = readText(file, 'uplink-credentials', 'the credentials file');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw bad(
      'uplink-credentials',
      `${file} is not JSON; write {"username": "<this host's broker user>", "password": "…"}`,
    );
  }
  const r = Credentials.safeParse(raw);
  if (!r.success)
    throw bad(
      'uplink-credentials',
      `${file} must hold exactly {"username", "password"} (non-empty strings): ${r.error.issues
        .map((i) => `${i.path.join('.') || 'file'}: ${i.message}`)
        .join('; ')}`,
    );
  // A password file others can read is a password everyone on the host has.
  const mode = statSync(file).mode & 0o077;
  if (mode !== 0)
    throw bad(
      'uplink-credentials',
      `${file} can be read by other users (mode ${(statSync(file).mode & 0o777).toString(8)}); chmod 600 it`,
    );
  return r.data;
}

function caOf(file: string): string {
  const text = readText(file, 'uplink-ca', 'the CA certificate');
  try {
    // Parse it now: a wrong file would otherwise only show as a TLS failure at every reconnect.
    new X509Certificate(text);
  } catch {
    throw bad(
      'uplink-ca',
      `${file} is not a PEM certificate; give the CA that signed the broker's`,
    );
  }
  return text;
}

function int(v: string | undefined, option: string, dflt: number, min: number, max: number) {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v)) throw bad(option, `expected a whole number, got ${JSON.stringify(v)}`);
  const n = Number(v);
  if (n < min || n > max) throw bad(option, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** The uplink options from parseArgs values; null when --uplink is not given. */
export function parseUplinkOptions(
  get: (option: string) => string | undefined,
): UplinkOptions | null {
  const url = get('uplink');
  const companions = [
    'uplink-credentials',
    'uplink-ca',
    'uplink-role',
    'uplink-scope',
    'uplink-keepalive-s',
    'uplink-buffer',
  ];
  if (url === undefined) {
    const stray = companions.find((o) => get(o) !== undefined);
    if (stray) throw bad(stray, 'needs --uplink mqtt[s]://HOST:PORT');
    return null;
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw bad(
      'uplink',
      `expected mqtt://HOST:PORT or mqtts://HOST:PORT, got ${JSON.stringify(url)}`,
    );
  }
  if (u.protocol !== 'mqtt:' && u.protocol !== 'mqtts:')
    throw bad('uplink', `the scheme must be mqtt or mqtts, got ${JSON.stringify(u.protocol)}`);
  if (u.username || u.password)
    throw bad(
      'uplink',
      'no credentials in the URL (they would show in ps); put them in --uplink-credentials FILE',
    );
  if (!u.hostname || !u.port || (u.pathname !== '' && u.pathname !== '/') || u.search || u.hash)
    throw bad(
      'uplink',
      `expected mqtt[s]://HOST:PORT with an explicit port, got ${JSON.stringify(url)}`,
    );
  const credFile = get('uplink-credentials');
  const caFile = get('uplink-ca');
  if (caFile !== undefined && u.protocol !== 'mqtts:')
    throw bad('uplink-ca', 'a CA is for TLS: use an mqtts:// uplink URL');
  const role = get('uplink-role') ?? 'operator';
  if (!(ROLES as readonly string[]).includes(role))
    throw bad('uplink-role', `one of ${ROLES.join(', ')}, got ${JSON.stringify(role)}`);
  const scope = get('uplink-scope') ?? null;
  if (scope !== null && nameProblem(scope))
    throw bad('uplink-scope', `${JSON.stringify(scope)} ${nameProblem(scope)}`);
  const creds = credFile === undefined ? null : credentialsOf(path.resolve(credFile));
  return {
    url: `${u.protocol}//${u.host}`,
    broker: u.host,
    username: creds?.username ?? null,
    password: creds?.password ?? null,
    ca: caFile === undefined ? null : caOf(path.resolve(caFile)),
    access: { role: role as Role, scope },
    keepaliveS: int(get('uplink-keepalive-s'), 'uplink-keepalive-s', 30, 1, 3600),
    bufferMessages: int(get('uplink-buffer'), 'uplink-buffer', 10_000, 0, 10_000_000),
    retainedTopics: 100_000,
  };
}

/** parseArgs declarations of the uplink options. */
export const UPLINK_ARGS = {
  uplink: { type: 'string' },
  'uplink-credentials': { type: 'string' },
  'uplink-ca': { type: 'string' },
  'uplink-role': { type: 'string' },
  'uplink-scope': { type: 'string' },
  'uplink-keepalive-s': { type: 'string' },
  'uplink-buffer': { type: 'string' },
} as const;
