/** sha256 of files and of whole trees (for cache keys and the manifest). */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import path from 'node:path';

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export const sha256 = (data: string | Uint8Array): string =>
  createHash('sha256').update(data).digest('hex');

/** Paths below `dir`, sorted bytewise (the order cpio and the hashes use). */
export async function walkSorted(dir: string, rel = ''): Promise<string[]> {
  const names = (await readdir(path.join(dir, rel))).sort(byteOrder);
  const out: string[] = [];
  for (const name of names) {
    const r = rel === '' ? name : `${rel}/${name}`;
    out.push(r);
    const st = await lstat(path.join(dir, r));
    if (st.isDirectory()) out.push(...(await walkSorted(dir, r)));
  }
  return out;
}

export const byteOrder = (a: string, b: string): number =>
  Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Hash of a tree's names, modes, symlink targets and contents (not mtimes). */
export async function sha256Tree(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const rel of await walkSorted(dir)) {
    const p = path.join(dir, rel);
    const st = await lstat(p);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) h.update(`l ${rel} ${await readlink(p)}\n`);
    else if (st.isDirectory()) h.update(`d ${rel} ${mode}\n`);
    else h.update(`f ${rel} ${mode} ${await sha256File(p)}\n`);
  }
  return h.digest('hex');
}

export async function fileSize(file: string): Promise<number> {
  return (await stat(file)).size;
}
