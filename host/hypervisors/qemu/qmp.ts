/**
 * A small typed QMP client. Hand-written on purpose: QMP is line-delimited
 * JSON with a greeting, a capabilities handshake, id-matched replies and
 * asynchronous events — about 150 lines — while the npm QMP packages are
 * unmaintained, untyped or pull in dependencies for what is a socket and
 * JSON.parse. Errors become MvirtError('HYPERVISOR_ERROR') with the QMP error
 * class in details and the raw error as cause.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import { connectUnixWithRetry, type ConnectOptions } from '../unix-socket.js';

/** QEMU run states (qapi RunState) as reported by query-status. */
export type QmpRunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

/** The commands mvirt uses, with their argument and return types. */
export interface QmpCommands {
  qmp_capabilities: { args: undefined; ret: Record<string, never> };
  stop: { args: undefined; ret: Record<string, never> };
  cont: { args: undefined; ret: Record<string, never> };
  system_reset: { args: undefined; ret: Record<string, never> };
  system_powerdown: { args: undefined; ret: Record<string, never> };
  quit: { args: undefined; ret: Record<string, never> };
  'query-status': {
    args: undefined;
    ret: { status: QmpRunState; running: boolean; singlestep?: boolean };
  };
  'query-version': {
    args: undefined;
    ret: { qemu: { major: number; minor: number; micro: number }; package: string };
  };
}

export type QmpCommand = keyof QmpCommands;

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Milliseconds since the epoch, from QEMU's timestamp. */
  at: number;
}

export interface QmpGreeting {
  version?: { qemu?: { major: number; minor: number; micro: number }; package?: string };
  capabilities?: string[];
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

export interface QmpClient extends EventEmitter<QmpClientEvents> {
  readonly greeting: QmpGreeting;
  execute<K extends QmpCommand>(
    cmd: K,
    ...args: QmpCommands[K]['args'] extends undefined ? [] : [QmpCommands[K]['args']]
  ): Promise<QmpCommands[K]['ret']>;
  /** Escape hatch for commands not in QmpCommands. */
  executeRaw<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T>;
  /** Resolves when the connection is gone (QEMU exited, or close() was called). */
  readonly closed: Promise<void>;
  readonly isClosed: boolean;
  close(): void;
}

/** A QMP error reply, kept as the cause of the MvirtError. */
export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${errorClass}: ${desc}`);
    this.name = 'QmpError';
  }
}

interface Pending {
  cmd: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface QmpClientOptions {
  log: Logger;
  /** Greeting + qmp_capabilities must finish within this. */
  handshakeTimeoutMs?: number;
  /** Per-command timeout; QMP commands we use answer at once. */
  commandTimeoutMs?: number;
}

/** Wrap a connected socket, wait for the greeting and negotiate capabilities. */
export async function createQmpClient(sock: Socket, opts: QmpClientOptions): Promise<QmpClient> {
  const log = opts.log;
  const commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
  const emitter = new EventEmitter<QmpClientEvents>();
  const pending = new Map<string, Pending>();
  let nextId = 1;
  let buf = '';
  let isClosed = false;
  let greeting: QmpGreeting | null = null;
  let onGreeting: ((g: QmpGreeting) => void) | null = null;
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));

  const fail = (cmd: string, err: Error) =>
    err instanceof MvirtError
      ? err
      : new MvirtError('HYPERVISOR_ERROR', `QMP ${cmd}: ${err.message}`, {
          cause: err,
          details:
            err instanceof QmpError ? { command: cmd, class: err.errorClass } : { command: cmd },
        });

  const handleMessage = (msg: Record<string, unknown>) => {
    if ('QMP' in msg) {
      greeting = (msg.QMP ?? {}) as QmpGreeting;
      onGreeting?.(greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = msg.timestamp as { seconds?: number; microseconds?: number } | undefined;
      const at =
        ts?.seconds !== undefined
          ? ts.seconds * 1000 + Math.floor((ts.microseconds ?? 0) / 1000)
          : Date.now();
      const ev: QmpEvent = {
        event: msg.event,
        data: (msg.data ?? {}) as Record<string, unknown>,
        at,
      };
      log.debug({ qmpEvent: ev.event, data: ev.data }, 'qmp event');
      emitter.emit('event', ev);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id !== undefined ? pending.get(id) : undefined;
    if (!p || id === undefined) {
      log.warn({ msg }, 'qmp reply without a pending request');
      return;
    }
    pending.delete(id);
    if ('error' in msg) {
      const e = (msg.error ?? {}) as { class?: string; desc?: string };
      p.reject(fail(p.cmd, new QmpError(e.class ?? 'GenericError', e.desc ?? 'unknown error')));
    } else {
      p.resolve(msg.return ?? {});
    }
  };

  sock.setEncoding('utf8');
  sock.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      try {
        handleMessage(JSON.parse(line) as Record<string, unknown>);
      } catch (err) {
        log.warn({ err, line: line.slice(0, 200) }, 'unparsable QMP line');
      }
    }
  });
  sock.on('error', (err) => log.debug({ err }, 'qmp socket error'));
  sock.on('close', () => {
    isClosed = true;
    for (const [id, p] of pending) {
      pending.delete(id);
      // `quit` succeeds by closing the connection, sometimes before its reply arrives.
      if (p.cmd === 'quit') p.resolve({});
      else p.reject(fail(p.cmd, new Error('connection closed')));
    }
    resolveClosed();
    emitter.emit('close');
  });

  const executeRaw = <T>(cmd: string, args?: Record<string, unknown>): Promise<T> => {
    if (isClosed) return Promise.reject(fail(cmd, new Error('connection closed')));
    const id = `m${nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new MvirtError('TIMEOUT', `QMP ${cmd}: no reply within ${commandTimeoutMs} ms`));
      }, commandTimeoutMs);
      timer.unref();
      pending.set(id, {
        cmd,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      const line = JSON.stringify(
        args ? { execute: cmd, arguments: args, id } : { execute: cmd, id },
      );
      sock.write(line + '\n');
    });
  };

  // defineProperties, not Object.assign: assign would freeze the getters' current values.
  const client = Object.defineProperties(emitter, {
    greeting: { get: () => greeting ?? {} },
    isClosed: { get: () => isClosed },
    closed: { value: closed },
    execute: { value: (cmd: string, args?: Record<string, unknown>) => executeRaw(cmd, args) },
    executeRaw: { value: executeRaw },
    close: { value: () => sock.destroy() },
  }) as unknown as QmpClient;

  // Handshake: greeting first, then qmp_capabilities (leaves negotiation mode).
  const handshakeMs = opts.handshakeTimeoutMs ?? 10_000;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new MvirtError('TIMEOUT', `no QMP greeting within ${handshakeMs} ms`)),
        handshakeMs,
      );
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      if (greeting) done();
      else onGreeting = done;
      void closed.then(() => {
        clearTimeout(timer);
        reject(new MvirtError('HYPERVISOR_ERROR', 'QMP connection closed before the greeting'));
      });
    });
    await client.execute('qmp_capabilities');
  } catch (err) {
    sock.destroy();
    throw err;
  }
  return client;
}

/** Connect to a QMP unix socket (retrying until QEMU created it) and handshake. */
export async function connectQmp(
  path: string,
  opts: QmpClientOptions & { connect: ConnectOptions },
): Promise<QmpClient> {
  const sock = await connectUnixWithRetry(path, opts.connect);
  return createQmpClient(sock, opts);
}
