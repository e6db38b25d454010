/**
 * Port forwarding: the agent-channel messages that carry TCP streams between
 * mvirtd and a port on the guest's loopback (kind `port`, both ways), and the
 * port.* RPCs (port.forward, port.list, port.close) with the public records of a forward.
 *
 * Only the host opens streams: it names each with a number of its own, and a
 * guest may answer (data, credit, end, close) only on a stream the host opened
 * and has not closed. Each direction is flow-controlled by credit: a side may
 * have at most `window` bytes sent and not yet granted back by its peer, and
 * grants back only what it has handed on (written into its socket), so a
 * slow reader holds back its own stream and nothing else.
 *
 * Chunks carry a sequence number per stream and direction: messages of one
 * topic may reach the subscriber out of order (aedes fans out the packets of
 * one read concurrently), and the receiver puts them back in order (never
 * holding more than the window).
 */
import * as z from 'zod';
import { VmRef } from './names.js';
import { DRY_RUN } from './plan.js';

/** One data message carries at most this many bytes. */
export const PORT_CHUNK_BYTES = 64 * 1024;
/**
 * Default credit per stream and direction (what either side may have on the
 * way): 8 chunks in flight, as the raw channel bench pipelines 8 pings.
 */
export const PORT_WINDOW_BYTES = 512 * 1024;
export const PORT_MAX_WINDOW_BYTES = 4 * 1024 * 1024;
/** Streams open at once per VM (host and agent both refuse more). */
export const PORT_MAX_STREAMS = 256;

const stream = z.number().int().nonnegative().max(0xffff_ffff);
const seq = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
/** Any Uint8Array (a Buffer's slice included), 1 to PORT_CHUNK_BYTES long. */
const data = z.custom<Uint8Array>(
  (b) => b instanceof Uint8Array && b.length >= 1 && b.length <= PORT_CHUNK_BYTES,
  `bytes, 1 to ${PORT_CHUNK_BYTES} of them`,
);
const credit = z.number().int().min(1).max(PORT_MAX_WINDOW_BYTES);
const reqId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/);

/** Why a side closed a stream (never free text: a guest chooses it). */
export const PORT_CLOSE_CODES = ['reset', 'refused', 'protocol', 'limit', 'gone'] as const;
export type PortCloseCode = (typeof PORT_CLOSE_CODES)[number];

const Data = z.strictObject({ op: z.literal('data'), stream, seq, data });
const Credit = z.strictObject({ op: z.literal('credit'), stream, bytes: credit });
/** No more data after chunk `seq - 1` (a TCP FIN); the other direction stays open. */
const End = z.strictObject({ op: z.literal('end'), stream, seq });
const Close = z.strictObject({
  op: z.literal('close'),
  stream,
  code: z.enum(PORT_CLOSE_CODES).optional(),
});

/**
 * host → guest. `open` is a request: the agent replies once its connection to
 * 127.0.0.1:port is up (or with an error); `window` is each direction's credit.
 */
export const PortDown = z.discriminatedUnion('op', [
  z.strictObject({
    op: z.literal('open'),
    id: reqId,
    stream,
    port: z.number().int().min(1).max(65535),
    window: credit,
  }),
  Data,
  Credit,
  End,
  Close,
]);
export type PortDown = z.infer<typeof PortDown>;

/** guest → host: answers on streams the host opened, never an `open`. */
export const PortUp = z.discriminatedUnion('op', [Data, Credit, End, Close]);
export type PortUp = z.infer<typeof PortUp>;

// ------------------------------------------------------------- public records

export const PortForwardRecord = z.strictObject({
  id: z.string().describe('pf-<hex>'),
  vmId: z.string(),
  vmName: z.string(),
  guestPort: z.number().int(),
  /** Where mvirtd listens. */
  address: z.string(),
  port: z.number().int(),
  /** Who opened it (the audit actor), and the client id it lives with (null: until port.close). */
  actor: z.string(),
  clientId: z.string().nullable(),
  createdAt: z.number(),
  /** Connections open now, and since the forward was opened. */
  connections: z.number().int(),
  totalConnections: z.number().int(),
  /** Bytes carried to and from the guest. */
  bytesToGuest: z.number(),
  bytesFromGuest: z.number(),
});
export type PortForwardRecord = z.infer<typeof PortForwardRecord>;

/**
 * What mvirtd tells the client that opened a forward about each connection,
 * on `P/_clients/<clientId>/replies/port/<forwardId>` (published only while
 * that client subscribes; `mvirt port-forward -v` prints them).
 */
export const PortForwardNotice = z.strictObject({
  forwardId: z.string(),
  /** The connection's number in this forward; 0: the forward itself (`close`: it closed, `error` says why). */
  conn: z.number().int(),
  event: z.enum(['open', 'close']),
  /** The TCP peer on the host side (`addr:port`). */
  peer: z.string(),
  bytesToGuest: z.number().optional(),
  bytesFromGuest: z.number().optional(),
  /** Why it closed, when not by an orderly end on both sides. */
  error: z.string().optional(),
});
export type PortForwardNotice = z.infer<typeof PortForwardNotice>;

export const portNoticeTopic = (replyTopic: string, forwardId: string): string =>
  `${replyTopic}/port/${forwardId}`;

// -------------------------------------------------------------- port.* RPCs

export const PORT_PARAMS = {
  /** Listen on a host address and carry each connection to 127.0.0.1:guestPort in the VM (docs/protocol.md). */
  'port.forward': z.strictObject({
    ...DRY_RUN,
    vm: VmRef,
    guestPort: z.number().int().min(1).max(65535),
    /** An IP address of this host (default 127.0.0.1); other than loopback: admins only. */
    hostAddress: z
      .string()
      .max(45)
      .regex(/^[0-9A-Fa-f:.]+$/, 'an IPv4 or IPv6 address')
      .optional(),
    /** Default 0: any free port (the reply says which). */
    hostPort: z.number().int().min(0).max(65535).optional(),
  }),
  'port.list': z.strictObject({}).optional(),
  'port.close': z.strictObject({
    ...DRY_RUN,
    id: z.string().regex(/^pf-[0-9a-f]{12}$/, 'a forward id as port.forward returns it (pf-<hex>)'),
  }),
} as const;

export const PORT_RESULTS = {
  'port.forward': PortForwardRecord,
  'port.list': z.strictObject({ forwards: z.array(PortForwardRecord) }),
  'port.close': PortForwardRecord,
} as const;
