/**
 * Applying container image layers to a folder, in order, the way a container
 * runtime's snapshotter would: `.wh.NAME` deletes NAME from the layers below,
 * `.wh..wh..opq` empties its folder of what the layers below put there.
 *
 * The folder is on the host and a layer is hostile input, so nothing here
 * lets the OS resolve a path the layer chose: every parent folder is looked
 * at with lstat, a symbolic link on the way is resolved by hand inside the
 * root (as the guest's chroot will resolve it), and files are created with
 * O_EXCL after removing what was there, so a link planted by one entry is
 * never written through by a later one. Refused, with the entry named:
 * absolute names, `..`, relative symbolic links that climb above the root,
 * hard links to anything outside it, device nodes, and more bytes or entries
 * than the limits allow.
 */
import { createWriteStream, type Stats, type WriteStream } from 'node:fs';
import {
  chmod,
  lchown,
  link,
  lstat,
  mkdir,
  readdir,
  readlink,
  rm,
  symlink,
} from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { MvirtError } from '../../protocol/errors.js';
import { readTar, writeBody, type TarHeader } from './tar.js';

export interface LayerLimits {
  /** Sum of file sizes over all layers. */
  maxBytes: number;
  /** Entries over all layers. */
  maxEntries: number;
}

/** 16 GiB and a million entries: far above real images, far below a full disk. */
export const DEFAULT_LIMITS: LayerLimits = { maxBytes: 16 * 2 ** 30, maxEntries: 1_000_000 };

export interface RootState {
  readonly root: string;
  readonly limits: LayerLimits;
  bytes: number;
  entries: number;
  /** Owners and modes are applied only when running as root (else the disk is all root's). */
  readonly asRoot: boolean;
  readonly warnings: string[];
  /** Folder (relative, real) → verified as a real folder in this import. */
  dirs: Set<string>;
}

export function createRootState(root: string, limits: LayerLimits = DEFAULT_LIMITS): RootState {
  return {
    root,
    limits,
    bytes: 0,
    entries: 0,
    asRoot: process.getuid?.() === 0,
    warnings: [],
    dirs: new Set(['']),
  };
}

const unsafe = (layer: string, entry: string, why: string, fix: string): MvirtError =>
  new MvirtError('IMAGE_INVALID', `layer ${layer}: entry "${entry}" ${why}; ${fix}`, {
    details: { layer, entry, why },
  });

/** An entry's name as path components, refusing what could leave the root. */
export function entryParts(layer: string, name: string): string[] {
  if (name.startsWith('/'))
    throw unsafe(
      layer,
      name,
      'is an absolute path',
      'layer entries must be relative to the image root (rebuild the layer with relative names)',
    );
  if (name.includes('\0')) throw unsafe(layer, name, 'has a NUL byte in its name', 'rebuild it');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..'))
    throw unsafe(
      layer,
      name,
      'has a ".." component',
      'layer entries may not climb out of the image root (rebuild the layer)',
    );
  return parts;
}

/**
 * Where a relative symbolic link in folder `dir` (components) leads, as
 * components below the root; null when it climbs above the root.
 */
function resolveLink(dir: readonly string[], target: string): string[] | null {
  const out = target.startsWith('/') ? [] : [...dir];
  for (const p of target.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') {
      if (out.length === 0) return null;
      out.pop();
    } else out.push(p);
  }
  return out;
}

const errno = (err: unknown): string | undefined => (err as NodeJS.ErrnoException).code;

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
}

/**
 * The real folder (components below the root) that `parts` names, following
 * symbolic links inside the root by hand and creating missing folders
 * (0755, root's) on the way. `create` false: null when it does not exist.
 */
async function realDir(
  s: RootState,
  layer: string,
  entry: string,
  parts: readonly string[],
  create: boolean,
): Promise<string[] | null> {
  let out: string[] = [];
  const todo = [...parts];
  let hops = 0;
  while (todo.length > 0) {
    const next = [...out, todo.shift()!];
    const rel = next.join('/');
    if (s.dirs.has(rel)) {
      out = next;
      continue;
    }
    const abs = path.join(s.root, rel);
    const st = await lstatOrNull(abs);
    if (st === null) {
      if (!create) return null;
      await mkdir(abs, { mode: 0o755 });
      s.dirs.add(rel);
      out = next;
    } else if (st.isDirectory()) {
      s.dirs.add(rel);
      out = next;
    } else if (st.isSymbolicLink()) {
      if (++hops > 40)
        throw unsafe(layer, entry, 'goes through more than 40 symbolic links', 'fix the loop');
      const to = resolveLink(out, await readlink(abs));
      if (to === null)
        throw unsafe(
          layer,
          entry,
          `goes through the symbolic link /${rel}, which points outside the image root`,
          'fix the link',
        );
      out = [];
      todo.unshift(...to);
    } else {
      if (!create) return null;
      throw unsafe(
        layer,
        entry,
        `is inside /${rel}, which is not a folder`,
        'a lower layer made it a file: remove it first (whiteout)',
      );
    }
  }
  return out;
}

/** Remove whatever is at `rel` (a folder with its contents) and forget the folders below. */
async function removePath(s: RootState, rel: string): Promise<void> {
  await rm(path.join(s.root, rel), { recursive: true, force: true });
  for (const d of s.dirs) if (d === rel || d.startsWith(`${rel}/`)) s.dirs.delete(d);
}

async function setOwner(s: RootState, abs: string, h: TarHeader, isLink: boolean): Promise<void> {
  if (s.asRoot) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
  // chown clears set-id bits: the mode goes on after it. Links have no mode.
  if (!isLink) {
    const mode = (h.mode ?? 0o644) & 0o7777;
    const dir = h.type === 'directory';
    await chmod(abs, s.asRoot ? mode : mode | (dir ? 0o700 : 0o600));
  }
}

/** Counts the bytes really written against the limit (a header may lie about the size). */
function limiter(s: RootState, layer: string, entry: string): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      s.bytes += chunk.length;
      if (s.bytes > s.limits.maxBytes) cb(tooLarge(s, layer, entry));
      else cb(null, chunk);
    },
  });
}

const tooLarge = (s: RootState, layer: string, entry: string): MvirtError =>
  new MvirtError(
    'IMAGE_TOO_LARGE',
    `layer ${layer}: the image's files pass ${s.limits.maxBytes} bytes at "${entry}"; import a smaller image or raise the limit (--max-bytes)`,
    { details: { layer, entry, maxBytes: s.limits.maxBytes } },
  );

/**
 * An opaque folder: everything the layers below put under it goes; what this
 * layer made stays (its folders emptied of the lower layers' files in turn).
 */
async function clearLower(s: RootState, made: ReadonlySet<string>, dirRel: string): Promise<void> {
  for (const name of await readdir(path.join(s.root, dirRel))) {
    const rel = dirRel === '' ? name : `${dirRel}/${name}`;
    if (!made.has(rel)) await removePath(s, rel);
    else if ((await lstat(path.join(s.root, rel))).isDirectory()) await clearLower(s, made, rel);
  }
}

/** Apply one layer (an uncompressed tar stream) on top of the root. */
export async function applyLayer(s: RootState, layer: string, tar: Readable): Promise<void> {
  /** What this layer made: an opaque marker clears only what lies below. */
  const made = new Set<string>();
  await readTar(tar, layer, async (h, body) => {
    if (++s.entries > s.limits.maxEntries)
      throw new MvirtError(
        'IMAGE_TOO_LARGE',
        `layer ${layer}: more than ${s.limits.maxEntries} entries; import a smaller image or raise the limit (--max-entries)`,
        { details: { layer, maxEntries: s.limits.maxEntries } },
      );
    const parts = entryParts(layer, h.name);
    if (parts.length === 0) return; // the root itself: it stays root's 0755
    const base = parts[parts.length - 1]!;
    const parentParts = parts.slice(0, -1);

    if (base.startsWith('.wh.')) {
      const dir = await realDir(s, layer, h.name, parentParts, false);
      if (dir === null) return; // nothing below to hide
      const dirRel = dir.join('/');
      if (base === '.wh..wh..opq') await clearLower(s, made, dirRel);
      else {
        const name = base.slice(4);
        if (name === '' || name === '..' || name === '.')
          throw unsafe(layer, h.name, 'is a whiteout of nothing', 'rebuild the layer');
        await removePath(s, dirRel === '' ? name : `${dirRel}/${name}`);
      }
      return;
    }

    if (h.type === 'character-device' || h.type === 'block-device')
      throw unsafe(
        layer,
        h.name,
        'is a device node',
        'images may not carry device nodes (the µOS gives jobs its /dev): remove it from the image',
      );
    if (h.type === 'fifo') {
      s.warnings.push(`layer ${layer}: FIFO "${h.name}" left out (make it at run time)`);
      return;
    }
    const dir = (await realDir(s, layer, h.name, parentParts, true))!;
    const rel = [...dir, base].join('/');
    const abs = path.join(s.root, rel);
    const st = await lstatOrNull(abs);
    // With its folders: an opaque marker later in this layer keeps them too.
    for (let i = 1; i <= dir.length; i++) made.add(dir.slice(0, i).join('/'));
    made.add(rel);

    switch (h.type) {
      case 'directory': {
        if (st !== null && !st.isDirectory()) await removePath(s, rel);
        if (st === null || !st.isDirectory()) await mkdir(abs, { mode: 0o700 });
        s.dirs.add(rel);
        await setOwner(s, abs, h, false);
        return;
      }
      case 'file':
      case 'contiguous-file':
      case null:
      case undefined: {
        if (s.bytes + (h.size ?? 0) > s.limits.maxBytes) throw tooLarge(s, layer, h.name);
        if (st !== null) await removePath(s, rel);
        const out: WriteStream = createWriteStream(abs, { flags: 'wx', mode: 0o600 });
        await writeBody(body, out, limiter(s, layer, h.name));
        await setOwner(s, abs, h, false);
        return;
      }
      case 'symlink': {
        const target = h.linkname ?? '';
        if (target === '')
          throw unsafe(layer, h.name, 'is a symbolic link to nothing', 'rebuild the layer');
        // Absolute targets resolve inside the job's chroot; relative ones must not climb out.
        if (!target.startsWith('/') && resolveLink(dir, target) === null)
          throw unsafe(
            layer,
            h.name,
            `is a symbolic link to "${target}", outside the image root`,
            'links may point only inside the image',
          );
        if (st !== null) await removePath(s, rel);
        await symlink(target, abs);
        if (s.asRoot) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
        return;
      }
      case 'link': {
        const target = h.linkname ?? '';
        const tparts = entryParts(layer, target);
        const tdir = await realDir(s, layer, h.name, tparts.slice(0, -1), false);
        const tname = tparts[tparts.length - 1];
        const trel = tdir === null || tname === undefined ? null : [...tdir, tname].join('/');
        const tst = trel === null ? null : await lstatOrNull(path.join(s.root, trel));
        if (trel === null || tst === null || tst.isDirectory())
          throw unsafe(
            layer,
            h.name,
            `is a hard link to "${target}", which is not a file of the image`,
            'hard links may point only at files earlier in the image',
          );
        if (trel === rel) return;
        if (st !== null) await removePath(s, rel);
        await link(path.join(s.root, trel), abs);
        return;
      }
      default:
        throw unsafe(
          layer,
          h.name,
          `has the unsupported type ${String(h.type)}`,
          'rebuild the layer with files, folders and links only',
        );
    }
  });
}
