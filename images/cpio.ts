/**
 * A deterministic cpio "newc" writer (the initramfs format). Written here
 * rather than shelling out to cpio(1) so the archive depends only on the tree:
 * entries sorted bytewise, owner root, every mtime = SOURCE_DATE_EPOCH, inode
 * numbers in order, and device nodes (/dev/console) without needing root.
 */
import { lstat, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { walkSorted } from './hash.js';

export interface CpioEntry {
  name: string;
  /** Full st_mode including the file type bits. */
  mode: number;
  data?: Buffer;
  rdev?: { major: number; minor: number };
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

const hex8 = (n: number): string => n.toString(16).padStart(8, '0');
const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

export function cpioNewc(entries: readonly CpioEntry[], mtime: number): Buffer {
  const parts: Buffer[] = [];
  let ino = 0;
  const add = (e: CpioEntry): void => {
    const data = e.data ?? Buffer.alloc(0);
    const nameBuf = Buffer.from(`${e.name}\0`);
    const isDir = (e.mode & 0o170000) === S_IFDIR;
    const header =
      '070701' +
      hex8(e.name === 'TRAILER!!!' ? 0 : ++ino) +
      hex8(e.mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(isDir ? 2 : 1) +
      hex8(e.name === 'TRAILER!!!' ? 0 : mtime) +
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(e.rdev?.major ?? 0) +
      hex8(e.rdev?.minor ?? 0) +
      hex8(nameBuf.length) +
      hex8(0); // check
    parts.push(
      Buffer.from(header, 'ascii'),
      nameBuf,
      pad4(110 + nameBuf.length),
      data,
      pad4(data.length),
    );
  };
  for (const e of entries) add(e);
  add({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

/** Entries for every path under `dir` (sorted), plus `extra` merged in order. */
export async function treeEntries(
  dir: string,
  extra: readonly CpioEntry[] = [],
): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  for (const rel of await walkSorted(dir)) {
    const p = path.join(dir, rel);
    const st = await lstat(p);
    const perm = st.mode & 0o7777;
    if (st.isSymbolicLink())
      out.push({ name: rel, mode: S_IFLNK | 0o777, data: Buffer.from(await readlink(p)) });
    else if (st.isDirectory()) out.push({ name: rel, mode: S_IFDIR | perm });
    else if (st.isFile()) out.push({ name: rel, mode: S_IFREG | perm, data: await readFile(p) });
  }
  const names = new Set(out.map((e) => e.name));
  for (const e of extra) if (!names.has(e.name)) out.push(e);
  return out.sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
}
