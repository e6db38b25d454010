/**
 * Files in a guest: the fs.* RPCs (controller ⇄ mvirtd) and the fs messages
 * of the agent channel (mvirtd ⇄ guest agent), with the schemas mvirtd checks
 * every guest answer against (unknown fields refused).
 *
 * A transfer (fs.write, fs.read) is a series of calls that share a
 * `transfer` id chosen by the controller, numbered by `seq` from 0. Seq 0
 * opens it (and carries the path and options); each call carries or asks for
 * at most FS_CHUNK_BYTES. A controller may have FS_WINDOW calls of a
 * transfer unanswered; mvirtd refuses more (TRANSFER_BUSY) rather than keep
 * them, and passes them to the agent in seq order, FS_WINDOW at most, so
 * neither a guest that stops reading nor a controller that stops asking makes
 * it hold more than FS_WINDOW chunks per transfer and FS_HOST_BUFFER_BYTES in
 * all. A write lands in a hidden partial file beside its target and is
 * renamed into place only once size and sha256 match; a read ends with the
 * size and sha256 of everything from offset 0.
 */
import * as z from 'zod';
import { DRY_RUN } from './plan.js';

/** The most bytes one transfer call carries (the agent channel's bench uses the same chunks). */
export const FS_CHUNK_BYTES = 256 * 1024;
/** Calls of one transfer that may be unanswered at once (the bench's 8 pings in flight). */
export const FS_WINDOW = 8;
/** All transfers' chunks mvirtd holds at once, at most. */
export const FS_HOST_BUFFER_BYTES = 32 * 1024 * 1024;
/** fs.list: the most entries one answer carries. */
export const FS_LIST_MAX = 2000;

/** An absolute path in the guest: no NUL, at most PATH_MAX. */
export const GuestPath = z
  .string()
  .min(1)
  .max(4096)
  .regex(/^\/[^\0]*$/, 'an absolute path (starting with /), without NUL');
export const TransferId = z
  .string()
  .regex(/^[A-Za-z0-9_-]{8,64}$/, 'a transfer id: 8 to 64 letters, digits, _ or -');
const Seq = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const Offset = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
export const FileMode = z.number().int().min(0).max(0o7777);
const Id32 = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32 - 2);
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'sha256 as 64 lowercase hex digits');
const Base64Chunk = z
  .string()
  .max(Math.ceil(FS_CHUNK_BYTES / 3) * 4)
  .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64 (RFC 4648, with padding)')
  .refine((t) => t.length % 4 === 0, 'base64 (RFC 4648, with padding)');
const ChunkLength = z.number().int().min(1).max(FS_CHUNK_BYTES);
const bytes = z.instanceof(Uint8Array);
const reqId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/);

export const FileEnd = z.strictObject({
  /** Bytes of the whole file, from offset 0. */
  size: Offset,
  sha256: Sha256,
});
export type FileEnd = z.infer<typeof FileEnd>;

/** Owner and mode a write or mkdir gives what it makes (default: root, 0644 / 0755). */
const Ownership = { mode: FileMode.optional(), uid: Id32.optional(), gid: Id32.optional() };

/** What seq 0 of a write says: where, how, and where to start. */
const WriteOpen = z
  .strictObject({
    path: GuestPath,
    ...Ownership,
    /** Keep what the partial file has (a cut transfer): the answer's `written` says where to go on. */
    resume: z.boolean().optional(),
    /** Cut the partial file to this many bytes and go on from there. */
    offset: Offset.optional(),
    /** The bytes are a tar archive: unpack it into the directory `path` once complete. */
    unpack: z.literal('tar').optional(),
  })
  .refine((o) => !(o.resume && o.offset !== undefined), 'give at most one of resume and offset');

const ReadOpen = z.strictObject({
  path: GuestPath,
  /** Start here (the answer at the end still covers the whole file). */
  offset: Offset.optional(),
  /** `path` is a directory: send a tar archive of what it holds (no offset). */
  pack: z.literal('tar').optional(),
});

export const FILE_TYPES = ['file', 'dir', 'symlink', 'other'] as const;
const GuestName = z.string().max(1024);
export const FileStat = z.strictObject({
  type: z.enum(FILE_TYPES),
  size: Offset,
  mode: FileMode,
  uid: Id32.or(z.literal(2 ** 32 - 1)),
  gid: Id32.or(z.literal(2 ** 32 - 1)),
  mtimeMs: z.number().finite(),
  /** A symbolic link's target. */
  target: z.string().max(4096).optional(),
});
export type FileStat = z.infer<typeof FileStat>;
export const FileEntry = FileStat.extend({ name: GuestName });
export type FileEntry = z.infer<typeof FileEntry>;

// ------------------------------------------------------------------ the RPCs

export const FS_PARAMS = {
  'fs.write': z
    .strictObject({
      ...DRY_RUN,
      vm: z.string().min(1).max(64),
      transfer: TransferId,
      seq: Seq,
      /** Bytes, base64 (binary-safe in JSON and CBOR alike). */
      data: Base64Chunk,
      /** Seq 0 only: the file's absolute path in the guest, owner, mode, resume, offset, unpack. */
      open: WriteOpen.optional(),
      /** The last call: the whole file's size and sha256; it is renamed into place if they match. */
      final: FileEnd.optional(),
    })
    .refine((p) => (p.seq === 0) === (p.open !== undefined), 'seq 0, and only seq 0, has open'),
  'fs.read': z
    .strictObject({
      vm: z.string().min(1).max(64),
      transfer: TransferId,
      seq: Seq,
      /** At most this many bytes (default FS_CHUNK_BYTES). */
      length: ChunkLength.optional(),
      /** Seq 0 only: the path, a start offset, or pack a directory as tar. */
      open: ReadOpen.optional(),
    })
    .refine((p) => (p.seq === 0) === (p.open !== undefined), 'seq 0, and only seq 0, has open')
    .refine((p) => !(p.open?.pack && p.open.offset), 'a packed directory starts at 0'),
  'fs.stat': z.strictObject({
    vm: z.string().min(1).max(64),
    path: GuestPath,
    /** Of what a symbolic link points to (default: the link itself). */
    follow: z.boolean().optional(),
  }),
  'fs.list': z.strictObject({
    vm: z.string().min(1).max(64),
    path: GuestPath,
    limit: z.number().int().min(1).max(FS_LIST_MAX).optional(),
  }),
  'fs.mkdir': z.strictObject({
    ...DRY_RUN,
    vm: z.string().min(1).max(64),
    path: GuestPath,
    ...Ownership,
    /** Make missing parents too (and accept a directory that is there). */
    parents: z.boolean().optional(),
  }),
  'fs.remove': z.strictObject({
    ...DRY_RUN,
    vm: z.string().min(1).max(64),
    path: GuestPath,
    /** Remove a directory with what it holds. */
    recursive: z.boolean().optional(),
  }),
  'fs.move': z.strictObject({
    ...DRY_RUN,
    vm: z.string().min(1).max(64),
    from: GuestPath,
    to: GuestPath,
    /** Replace what is at `to` (default: FILE_EXISTS). */
    overwrite: z.boolean().optional(),
  }),
} as const;

export const FsWriteResult = z.strictObject({
  /** Bytes in the partial file after this call (where a resumed transfer goes on). */
  written: Offset,
  /** The last call: the file is in place with this size and sha256. */
  complete: FileEnd.optional(),
});
export type FsWriteResult = z.infer<typeof FsWriteResult>;
export const FsReadResult = z.strictObject({
  /** The bytes at the transfer's position, base64. */
  data: z.string(),
  /** No more: `end` has the size and sha256 of the whole file. */
  eof: z.boolean(),
  end: FileEnd.optional(),
});
export type FsReadResult = z.infer<typeof FsReadResult>;
export const FsListResult = z.strictObject({
  path: z.string(),
  entries: z.array(FileEntry),
  /** More entries than `limit`: the first ones by name are here. */
  truncated: z.boolean(),
});

export const FS_RESULTS = {
  'fs.write': FsWriteResult,
  'fs.read': FsReadResult,
  'fs.stat': FileStat.extend({ path: z.string() }),
  'fs.list': FsListResult,
  'fs.mkdir': FileStat.extend({ path: z.string() }),
  'fs.remove': z.strictObject({ removed: z.boolean() }),
  'fs.move': FileStat.extend({ path: z.string() }),
} as const;

export const FS_MUTATING = ['fs.write', 'fs.mkdir', 'fs.remove', 'fs.move'] as const;

// --------------------------------------------------------- the agent channel

/** host → guest: one chunk of a write (its answer is an FsWriteAnswer). */
export const FsWriteMsg = z.strictObject({
  id: reqId,
  transfer: TransferId,
  seq: Seq,
  data: bytes.refine((b) => b.length <= FS_CHUNK_BYTES, `at most ${FS_CHUNK_BYTES} bytes`),
  open: WriteOpen.optional(),
  final: FileEnd.optional(),
});
/** host → guest: the next chunk of a read (its answer is an FsReadAnswer). */
export const FsReadMsg = z.strictObject({
  id: reqId,
  transfer: TransferId,
  seq: Seq,
  length: ChunkLength,
  open: ReadOpen.optional(),
});
/** host → guest: everything else, one op each. */
export const FsOpMsg = z.strictObject({
  id: reqId,
  op: z.discriminatedUnion('kind', [
    z.strictObject({
      kind: z.literal('stat'),
      path: GuestPath,
      follow: z.boolean().optional(),
    }),
    z.strictObject({
      kind: z.literal('list'),
      path: GuestPath,
      limit: z.number().int().min(1).max(FS_LIST_MAX),
    }),
    z.strictObject({
      kind: z.literal('mkdir'),
      path: GuestPath,
      ...Ownership,
      parents: z.boolean().optional(),
    }),
    z.strictObject({
      kind: z.literal('remove'),
      path: GuestPath,
      recursive: z.boolean().optional(),
    }),
    z.strictObject({
      kind: z.literal('move'),
      from: GuestPath,
      to: GuestPath,
      overwrite: z.boolean().optional(),
    }),
    /** End a transfer (its controller gave up); `discard` removes a write's partial file. */
    z.strictObject({
      kind: z.literal('close'),
      transfer: TransferId,
      discard: z.boolean().optional(),
    }),
  ]),
});
export type FsWriteMsg = z.infer<typeof FsWriteMsg>;
export type FsReadMsg = z.infer<typeof FsReadMsg>;
export type FsOpMsg = z.infer<typeof FsOpMsg>;
export type FsOp = FsOpMsg['op'];

export const FS_AGENT_DOWN = { fsWrite: FsWriteMsg, fsRead: FsReadMsg, fsOp: FsOpMsg } as const;

/** guest → host answers, checked by mvirtd (a guest's answer is never trusted). */
export const FsWriteAnswer = z.strictObject({ written: Offset, complete: FileEnd.optional() });
export const FsReadAnswer = z.strictObject({
  data: bytes.refine((b) => b.length <= FS_CHUNK_BYTES),
  eof: z.boolean(),
  end: FileEnd.optional(),
});
export type FsReadAnswer = z.infer<typeof FsReadAnswer>;
export const FsStatAnswer = FileStat;
export const FsListAnswer = z.strictObject({
  entries: z.array(FileEntry).max(FS_LIST_MAX),
  truncated: z.boolean(),
});
export const FsDoneAnswer = z.strictObject({ removed: z.boolean().optional() });

/**
 * The agent's error codes for files (in a reply's error.code); mvirtd turns
 * each into the API error of the same name (protocol/errors.ts).
 */
export const FS_AGENT_ERRORS = [
  'FILE_NOT_FOUND',
  'FILE_EXISTS',
  'FILE_PERMISSION',
  'FILE_TYPE',
  'GUEST_DISK_FULL',
  'TRANSFER_OFFSET',
  'TRANSFER_MISMATCH',
  'TRANSFER_NOT_FOUND',
] as const;
export type FsAgentError = (typeof FS_AGENT_ERRORS)[number];
