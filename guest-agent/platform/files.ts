/**
 * The agent's file access (the fs.* messages, guest-agent/files.ts), part of
 * the platform seam: Linux's is Node's fs; a unit test wraps it to play a
 * full disk or a failing device.
 */
import { constants } from 'node:fs';
import * as fsp from 'node:fs/promises';

/** What the core needs of a stat (a structural subset of fs.Stats). */
export interface GuestStats {
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
}

/** An open file: positioned reads and writes (fs.FileHandle's subset). */
export interface GuestFile {
  read(buf: Buffer, position: number): Promise<number>;
  write(buf: Uint8Array, position: number): Promise<number>;
  truncate(length: number): Promise<void>;
  sync(): Promise<void>;
  stat(): Promise<GuestStats>;
  close(): Promise<void>;
}

/** How a file is opened: read it; make it anew (empty); update it (it must exist). */
export type OpenHow = 'read' | 'create' | 'update';

export interface GuestFs {
  open(path: string, how: OpenHow, mode?: number): Promise<GuestFile>;
  lstat(path: string): Promise<GuestStats>;
  /** What a symbolic link points to (the path itself otherwise). */
  stat(path: string): Promise<GuestStats>;
  readdir(path: string): Promise<string[]>;
  readlink(path: string): Promise<string>;
  mkdir(path: string, opts: { recursive: boolean; mode: number }): Promise<void>;
  rmdir(path: string): Promise<void>;
  /** A directory with everything under it. */
  rmTree(path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  chown(path: string, uid: number, gid: number): Promise<void>;
}

const FLAGS: Record<OpenHow, number> = {
  // Reads follow symbolic links (`mvirt cp VM:/etc/resolv.conf .`); writes
  // make their partial file anew and never follow one planted there.
  read: constants.O_RDONLY | constants.O_NONBLOCK,
  create: constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
  update: constants.O_RDWR | constants.O_NOFOLLOW,
};

function wrap(fh: fsp.FileHandle): GuestFile {
  return {
    read: async (buf, position) => (await fh.read(buf, 0, buf.length, position)).bytesRead,
    write: async (buf, position) => (await fh.write(buf, 0, buf.length, position)).bytesWritten,
    truncate: (length) => fh.truncate(length),
    sync: () => fh.sync(),
    stat: () => fh.stat(),
    close: () => fh.close(),
  };
}

/** Node's fs, as the guest (and a unit test on a temporary folder) has it. */
export function createNodeFs(): GuestFs {
  return {
    open: async (path, how, mode = 0o600) => wrap(await fsp.open(path, FLAGS[how], mode)),
    lstat: (path) => fsp.lstat(path),
    stat: (path) => fsp.stat(path),
    readdir: (path) => fsp.readdir(path),
    readlink: (path) => fsp.readlink(path),
    mkdir: async (path, opts) => void (await fsp.mkdir(path, opts)),
    rmdir: (path) => fsp.rmdir(path),
    rmTree: (path) => fsp.rm(path, { recursive: true }),
    unlink: (path) => fsp.unlink(path),
    rename: (from, to) => fsp.rename(from, to),
    chmod: (path, mode) => fsp.chmod(path, mode),
    chown: (path, uid, gid) => fsp.chown(path, uid, gid),
  };
}
