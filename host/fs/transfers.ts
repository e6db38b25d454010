/**
 * The host's half of fs.write / fs.read transfers (protocol/fs.ts): between a
 * controller's numbered calls and the agent's answers, with a fixed bound on
 * what mvirtd holds.
 *
 * Each call of a transfer is held from its arrival until the agent answers
 * it (or the transfer ends). A transfer holds at most `window` calls, and all
 * transfers together at most `bufferBytes` of chunk data (a read counts the
 * length it asks for); a call beyond either is refused at once with
 * TRANSFER_BUSY, never queued. Calls reach the agent in seq order (one that
 * overtook its predecessor waits for it, inside the window), so a guest that
 * stops answering holds back at most `window` chunks per transfer, and a
 * controller that stops asking holds nothing back at all.
 *
 * Every answer of the guest is checked (strict schemas): a read's chunk may
 * not be longer than asked nor empty before the end, and its end (size,
 * sha256) must be what mvirtd itself counted and hashed; anything else ends
 * the transfer. A transfer idle for `idleMs` ends (its partial file stays in
 * the guest for a resume).
 */
import { createHash, type Hash } from 'node:crypto';
import type * as z from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import {
  FS_AGENT_ERRORS,
  FsReadAnswer,
  FsWriteAnswer,
  type FileEnd,
  type FsReadMsg,
  type FsWriteMsg,
} from '../../protocol/fs.js';
import { formatIssues } from '../../protocol/validate.js';

export interface TransferOptions {
  window: number;
  bufferBytes: number;
  /** Transfers open at once, at most (each keeps a hash and a little state). */
  maxTransfers: number;
  callTimeoutMs: number;
  idleMs: number;
}

type Kind = 'write' | 'read';
type WriteBody = Omit<FsWriteMsg, 'id'>;
type ReadBody = Omit<FsReadMsg, 'id'>;

export interface TransferDeps {
  /** One request to the VM's agent (agent sessions' call). */
  call(
    vmId: string,
    kind: 'fsWrite' | 'fsRead',
    body: WriteBody | ReadBody,
    timeoutMs: number,
  ): Promise<unknown>;
  /** The transfer ended before its last chunk (tell the agent; best effort). */
  abandoned?(vmId: string, transfer: string): void;
  options: TransferOptions;
}

interface Queued {
  seq: number;
  body: WriteBody | ReadBody;
  bytes: number;
  resolve(v: unknown): void;
  reject(e: Error): void;
}

interface Session {
  key: string;
  vmId: string;
  kind: Kind;
  transfer: string;
  path: string;
  /** The next seq to pass to the agent. */
  nextSeq: number;
  /** Calls held (waiting for their turn or for the agent's answer). */
  held: number;
  queue: Map<number, Queued>;
  /** Answers are handled in seq order (a read's hash depends on it). */
  order: Promise<unknown>;
  timer: NodeJS.Timeout | null;
  ended: boolean;
  /** A read: bytes passed on, and their hash while they start at offset 0. */
  pos: number;
  hash: Hash | null;
}

export type WriteAnswer = z.infer<typeof FsWriteAnswer>;
export interface ReadAnswer {
  data: Uint8Array;
  eof: boolean;
  end?: FileEnd;
}

const busy = (why: string) =>
  new MvirtError('TRANSFER_BUSY', `${why}: send the next chunk once one is answered`);

/** An agent's error reply for a file, as the API error of the same name. */
export function fsErrorOf(err: unknown): unknown {
  if (!(err instanceof MvirtError) || err.code !== 'AGENT_ERROR') return err;
  const code = (err.details as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && (FS_AGENT_ERRORS as readonly string[]).includes(code))
    return new MvirtError(code as (typeof FS_AGENT_ERRORS)[number], err.message);
  return err;
}

export function createTransfers(deps: TransferDeps) {
  const o = deps.options;
  const sessions = new Map<string, Session>();
  let heldBytes = 0;

  const keyOf = (vmId: string, kind: Kind, transfer: string) => `${vmId}\0${kind}\0${transfer}`;

  function end(s: Session, why: MvirtError, abandoned: boolean): void {
    if (s.ended) return;
    s.ended = true;
    if (sessions.get(s.key) === s) sessions.delete(s.key);
    if (s.timer) clearTimeout(s.timer);
    for (const q of s.queue.values()) {
      release(s, q.bytes);
      q.reject(why);
    }
    s.queue.clear();
    if (abandoned) deps.abandoned?.(s.vmId, s.transfer);
  }

  function release(s: Session, bytes: number): void {
    s.held--;
    heldBytes -= bytes;
  }

  function touch(s: Session): void {
    if (s.timer) clearTimeout(s.timer);
    s.timer = setTimeout(
      () =>
        end(
          s,
          new MvirtError(
            'TRANSFER_NOT_FOUND',
            `transfer ${s.transfer} ended: no call for ${o.idleMs} ms`,
          ),
          true,
        ),
      o.idleMs,
    );
    s.timer.unref?.();
  }

  /** Check one answer of the guest; anything it should not have said ends the transfer. */
  function check(s: Session, q: Queued, raw: unknown): unknown {
    if (s.kind === 'write') {
      const r = FsWriteAnswer.safeParse(raw);
      if (!r.success) throw bad(s, `an invalid write answer (${formatIssues(r.error)})`);
      if (r.data.complete) end(s, notFound(s), false);
      return r.data;
    }
    const r = FsReadAnswer.safeParse(raw);
    if (!r.success) throw bad(s, `an invalid read answer (${formatIssues(r.error)})`);
    const a = r.data;
    const asked = (q.body as ReadBody).length;
    if (a.data.length > asked) throw bad(s, `${a.data.length} bytes where ${asked} were asked`);
    if (!a.eof && a.data.length === 0) throw bad(s, 'an empty chunk before the end');
    if (a.eof !== (a.end !== undefined)) throw bad(s, 'an end without eof, or eof without one');
    s.hash?.update(a.data);
    s.pos += a.data.length;
    if (a.end) {
      const sha = s.hash?.digest('hex');
      end(s, notFound(s), false);
      if (a.end.size !== s.pos || (sha !== undefined && sha !== a.end.sha256))
        throw new MvirtError(
          'TRANSFER_MISMATCH',
          `the guest sent ${s.pos} bytes${sha ? ` with sha256 ${sha}` : ''} but claims ${a.end.size} with ${a.end.sha256}`,
        );
    }
    return a;
  }

  const notFound = (s: Session) =>
    new MvirtError('TRANSFER_NOT_FOUND', `transfer ${s.transfer} has ended`);

  function bad(s: Session, what: string): MvirtError {
    const e = new MvirtError('AGENT_ERROR', `the agent of ${s.vmId} answered ${what}`);
    end(s, e, true);
    return e;
  }

  /** Pass on every call whose turn it is. */
  function pump(s: Session): void {
    for (let q = s.queue.get(s.nextSeq); q && !s.ended; q = s.queue.get(s.nextSeq)) {
      s.queue.delete(q.seq);
      s.nextSeq++;
      const item = q;
      const answer = deps.call(
        s.vmId,
        s.kind === 'write' ? 'fsWrite' : 'fsRead',
        item.body,
        o.callTimeoutMs,
      );
      // Its turn in s.order may come after it settled: a rejection before that
      // would have no handler yet, and Node ends the process for it (the files
      // bench did: a read answered TRANSFER_NOT_FOUND while earlier answers
      // were still in line, 2026-12-08). Handled below, in order.
      answer.catch(() => undefined);
      const handled = s.order.then(
        () => answer,
        () => answer,
      );
      s.order = handled.then(
        (raw) => {
          // Freed before the caller hears: what it sends next finds the place.
          release(s, item.bytes);
          try {
            if (s.ended) throw notFound(s);
            item.resolve(check(s, item, raw));
          } catch (err) {
            item.reject(err as Error);
          }
        },
        (err: unknown) => {
          release(s, item.bytes);
          const e = fsErrorOf(err);
          end(s, e instanceof MvirtError ? e : notFound(s), true);
          item.reject(e instanceof Error ? e : new Error(String(e)));
        },
      );
    }
  }

  function chunk(
    vmId: string,
    kind: Kind,
    seq: number,
    body: WriteBody | ReadBody,
    bytes: number,
  ): Promise<unknown> {
    const key = keyOf(vmId, kind, body.transfer);
    let s = sessions.get(key);
    if (heldBytes + bytes > o.bufferBytes)
      return Promise.reject(busy(`mvirtd holds ${heldBytes} bytes of transfers`));
    if (seq === 0) {
      if (s) end(s, new MvirtError('TRANSFER_NOT_FOUND', 'started again at seq 0'), false);
      if (sessions.size >= o.maxTransfers)
        return Promise.reject(busy(`${o.maxTransfers} transfers are open`));
      s = {
        key,
        vmId,
        kind,
        transfer: body.transfer,
        path: body.open?.path ?? '',
        nextSeq: 0,
        held: 0,
        queue: new Map(),
        order: Promise.resolve(),
        timer: null,
        ended: false,
        pos: (body.open as ReadBody['open'])?.offset ?? 0,
        hash:
          kind === 'read' && !(body.open as ReadBody['open'])?.offset ? createHash('sha256') : null,
      };
      sessions.set(key, s);
    } else if (!s) {
      return Promise.reject(
        new MvirtError(
          'TRANSFER_NOT_FOUND',
          `no ${kind} transfer ${body.transfer} on this VM (it ended or never began): start again at seq 0${kind === 'write' ? ' with open.resume' : ''}`,
        ),
      );
    }
    const session = s;
    if (seq < session.nextSeq || session.queue.has(seq))
      return Promise.reject(
        new MvirtError(
          'TRANSFER_OFFSET',
          `transfer ${body.transfer}: chunk ${seq} was sent already (next: ${session.nextSeq})`,
        ),
      );
    if (session.held >= o.window || seq >= session.nextSeq + o.window)
      return Promise.reject(busy(`transfer ${body.transfer} has ${o.window} chunks on the way`));
    session.held++;
    heldBytes += bytes;
    touch(session);
    return new Promise((resolve, reject) => {
      session.queue.set(seq, { seq, body, bytes, resolve, reject });
      pump(session);
    });
  }

  return {
    write: (vmId: string, seq: number, body: WriteBody): Promise<WriteAnswer> =>
      chunk(vmId, 'write', seq, body, body.data.length) as Promise<WriteAnswer>,
    read: (vmId: string, seq: number, body: ReadBody): Promise<ReadAnswer> =>
      chunk(vmId, 'read', seq, body, body.length) as Promise<ReadAnswer>,
    /** The path a transfer opened with (for the audit of its end). */
    pathOf: (vmId: string, kind: Kind, transfer: string): string | undefined =>
      sessions.get(keyOf(vmId, kind, transfer))?.path,
    /** Bytes of chunk data held now (tests: never above bufferBytes). */
    heldBytes: () => heldBytes,
    open: () => sessions.size,
    /** A VM went away: its transfers end. */
    dropVm(vmId: string, reason: string): void {
      for (const s of [...sessions.values()])
        if (s.vmId === vmId) end(s, new MvirtError('AGENT_UNAVAILABLE', reason), false);
    },
    close(): void {
      for (const s of [...sessions.values()])
        end(s, new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down'), false);
    },
  };
}

export type Transfers = ReturnType<typeof createTransfers>;
