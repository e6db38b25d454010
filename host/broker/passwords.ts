/**
 * Controller passwords: scrypt (node:crypto, no dependency) in a PHC-style
 * string so the parameters travel with the hash and can be raised later:
 *
 *     $scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>
 *
 * 16-byte random salt, 32-byte key. Make one with `hashPassword()` or
 * `node --import tsx host/broker/hash-password.ts` (reads the password on stdin).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import pLimit from 'p-limit';
import { MvirtError } from '../../protocol/errors.js';

const KEY_LENGTH = 32;
const SALT_LENGTH = 16;
export const DEFAULT_SCRYPT = { N: 16384, r: 8, p: 1 } as const;
// Bounds keep a mistyped config from asking scrypt for gigabytes per login.
const MAX_N = 1 << 20;
const MAX_MEM = 256 * 1024 * 1024;

const FORMAT = /^\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)$/;

interface Parsed {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  hash: Buffer;
}

function scrypt(password: string, salt: Buffer, len: number, o: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password, salt, len, o, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

/** Parse a stored hash; null when it is not in the documented format. */
export function parsePasswordHash(s: string): Parsed | null {
  const m = FORMAT.exec(s);
  if (!m) return null;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (N < 2 || N > MAX_N || (N & (N - 1)) !== 0) return null;
  if (r < 1 || r > 32 || p < 1 || p > 16) return null;
  const salt = Buffer.from(m[4]!, 'base64');
  const hash = Buffer.from(m[5]!, 'base64');
  if (salt.length < 8 || hash.length < 16) return null;
  return { N, r, p, salt, hash };
}

export async function hashPassword(
  password: string,
  o: { N: number; r: number; p: number } = DEFAULT_SCRYPT,
): Promise<string> {
  const salt = randomBytes(SALT_LENGTH);
  const key = await scrypt(password, salt, KEY_LENGTH, { ...o, maxmem: MAX_MEM });
  return `$scrypt$n=${o.N},r=${o.r},p=${o.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/**
 * Password checks run in one dedicated worker thread (scryptSync there), not on
 * libuv's pool: glibc gives every thread that mallocs its own arena and keeps
 * freed memory in it, so scrypt's 16 MiB spread over the pool's four threads
 * stayed resident as 64 MiB (measured: 60 checks grew RSS by 64.3 MiB on the
 * pool, 10.6 MiB with one arena). One thread keeps it to one 16 MiB block.
 * The worker is made on the first check and never keeps the process alive.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { scryptSync } = require('node:crypto');
// This thread at the lowest CPU priority (nice 19; on Linux a thread has its
// own, set through its thread id): under a login flood scrypt runs on every
// spare cycle but never ahead of mvirtd's main thread. On the 2-core machine,
// with the flood's own client process busy too, a logged-in controller's
// vm.create went from 2.17× its idle time to 0.81× and 0.93× (login flood
// test, load average 4–6).
try {
  const tid = Number(require('node:fs').readlinkSync('/proc/thread-self').split('/').pop());
  require('node:os').setPriority(tid, 19);
} catch {
  // not Linux, or not allowed: the check runs at normal priority
}
parentPort.on('message', (m) => {
  try {
    const key = scryptSync(m.password, Buffer.from(m.salt), m.len, m.o);
    parentPort.postMessage({ id: m.id, key });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String(err && err.message || err) });
  }
});`;
let worker: Worker | null = null;
let nextId = 0;
const pending = new Map<number, { resolve: (k: Buffer) => void; reject: (e: Error) => void }>();

function checkerScrypt(
  password: string,
  salt: Buffer,
  len: number,
  o: ScryptOptions,
): Promise<Buffer> {
  if (!worker) {
    const w = new Worker(WORKER_SOURCE, { eval: true });
    w.on('message', (m: { id: number; key?: Uint8Array; error?: string }) => {
      const p = pending.get(m.id);
      pending.delete(m.id);
      if (pending.size === 0) w.unref();
      if (m.key) p?.resolve(Buffer.from(m.key));
      else p?.reject(new Error(m.error ?? 'scrypt failed'));
    });
    const fail = (err: Error): void => {
      worker = null;
      for (const p of pending.values()) p.reject(err);
      pending.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`password worker exited (${code})`)));
    // Held (ref'd) only while a check is pending: a worker ref'd when idle
    // kept every test process that checked a password alive after its last
    // test (CI hung on broker-agent.test.ts); one unref'd while a check is
    // pending let a process end with the check unanswered. unref() comes
    // after the listeners, since adding a 'message' listener refs it again.
    w.unref();
    worker = w;
  }
  const id = ++nextId;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker!.ref();
    worker!.postMessage({ id, password, salt, len, o });
  });
}

/**
 * Password checks run one at a time, and at most MAX_WAITING wait. Each
 * scrypt at the default parameters takes 128·N·r = 16 MiB on libuv's shared
 * thread pool; unbounded, 64 connections looping wrong passwords grew mvirtd
 * by 87 MiB and slowed a logged-in controller's vm.create from 17 ms to 9 s
 * (issue 11), because the pool also serves SQLite-free fs work. One at a time
 * bounds pre-auth scrypt memory to 16 MiB and leaves three of the four pool
 * threads to everyone else; a login beyond the queue is refused at once.
 */
const checks = pLimit(1);
export const MAX_WAITING_CHECKS = 64;

/** Constant-time check of a password against a stored hash (false on a malformed hash). */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const h = parsePasswordHash(stored);
  if (!h) return false;
  if (checks.pendingCount >= MAX_WAITING_CHECKS)
    throw new MvirtError('NOT_AUTHORIZED', 'too many logins in progress; try again in a moment');
  const key = await checks(() =>
    checkerScrypt(password, h.salt, h.hash.length, { N: h.N, r: h.r, p: h.p, maxmem: MAX_MEM }),
  );
  return timingSafeEqual(key, h.hash);
}

/** Password checks running or waiting now (for tests and logs). */
export const checksInFlight = (): number => checks.activeCount + checks.pendingCount;

/**
 * A fixed hash for unknown user names: verifying against it costs the same as
 * a real check, so response time does not tell which user names exist.
 */
let dummy: Promise<string> | null = null;
export const dummyHash = (): Promise<string> =>
  (dummy ??= hashPassword(randomBytes(16).toString('hex')));

/**
 * A user's password against a users table (name → hash), for MQTT and HTTP
 * alike. Unknown users cost a real scrypt too, so timing does not reveal names.
 */
export async function checkUser(
  users: ReadonlyMap<string, string>,
  user: string,
  password: string,
): Promise<boolean> {
  const stored = users.get(user);
  const ok = await verifyPassword(password, stored ?? (await dummyHash()));
  return ok && stored !== undefined;
}
