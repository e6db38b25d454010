/**
 * Where volume files live and the checks that keep mvirtd inside that folder.
 * A path is always `<volumes dir>/<id>.<format>` with an id mvirtd made
 * (vol-<hex>): no RPC field is ever a host path. Before every use the file is
 * looked at with lstat: a symbolic link or anything but a regular file is
 * refused (STORAGE_UNSAFE) and left alone, so a link planted in the folder
 * (a restored backup, a careless admin) never sends qemu-img or QEMU to a file
 * outside it. The folder itself is mvirtd's (0700): nobody else can race a
 * check by swapping a file in between.
 */
import { statfsSync } from 'node:fs';
import { lstat, mkdir, realpath } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { VolumeFormat } from '../../protocol/rpc.js';
import { NAME_RE } from '../../protocol/topics.js';

export const VOLUME_ID_RE = /^vol-[0-9a-f]{12}$/;

export interface VolumeFiles {
  readonly dir: string;
  /** Make the folder (0700) and check it is a real directory, not a link. */
  init(): Promise<void>;
  /** The file of a volume: derived from its id and format only. */
  pathOf(id: string, format: VolumeFormat): string;
  /** The file name (for a qcow2 overlay's relative backing reference). */
  nameOf(id: string, format: VolumeFormat): string;
  /** STORAGE_UNSAFE unless the file is a regular file (never a link) directly in the folder. */
  checkFile(id: string, format: VolumeFormat): Promise<string>;
  /** Nothing there yet (a new volume's file): STORAGE_UNSAFE when anything is. */
  checkAbsent(id: string, format: VolumeFormat): Promise<string>;
  /** Bytes free for mvirtd (statfs: blocks available to unprivileged users × block size). */
  freeBytes(): number;
  /** Bytes a file of the folder takes on disk (its allocated blocks; lstat, never a link's target). */
  allocatedBytes(file: string): Promise<number>;
  /** A file of the import folder, by its name only: IMPORT_REFUSED unless safe. */
  importSource(importDir: string | null, name: string): Promise<string>;
}

const unsafe = (file: string, why: string): MvirtError =>
  new MvirtError('STORAGE_UNSAFE', `${file} ${why}; mvirtd leaves it alone`, {
    details: { file: path.basename(file) },
  });

export function createVolumeFiles(dir: string): VolumeFiles {
  const root = path.resolve(dir);
  const nameOf = (id: string, format: VolumeFormat): string => {
    // Ids come from the database, which mvirtd alone writes; checked anyway.
    if (!VOLUME_ID_RE.test(id)) throw new MvirtError('INVALID_NAME', `bad volume id ${id}`);
    return `${id}.${format}`;
  };
  const pathOf = (id: string, format: VolumeFormat): string => path.join(root, nameOf(id, format));

  async function checkDir(): Promise<void> {
    const st = await lstat(root);
    if (st.isSymbolicLink() || !st.isDirectory())
      throw unsafe(root, 'is not a directory (a symbolic link?)');
  }

  return {
    dir: root,
    async init() {
      await mkdir(root, { recursive: true, mode: 0o700 });
      await checkDir();
    },
    pathOf,
    nameOf,
    async checkFile(id, format) {
      await checkDir();
      const file = pathOf(id, format);
      let st;
      try {
        st = await lstat(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT')
          throw new MvirtError('STORAGE_UNSAFE', `the file of volume ${id} is missing`, {
            details: { file: path.basename(file) },
          });
        throw err;
      }
      if (st.isSymbolicLink()) throw unsafe(file, 'is a symbolic link');
      if (!st.isFile()) throw unsafe(file, 'is not a regular file');
      return file;
    },
    async checkAbsent(id, format) {
      await checkDir();
      const file = pathOf(id, format);
      try {
        await lstat(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return file;
        throw err;
      }
      throw unsafe(file, 'already exists');
    },
    async allocatedBytes(file) {
      return (await lstat(file)).blocks * 512;
    },
    freeBytes() {
      // Synchronous: one cheap syscall, and system.info is synchronous.
      const s = statfsSync(root);
      return s.bavail * s.bsize;
    },
    async importSource(importDir, name) {
      if (importDir === null)
        throw new MvirtError(
          'IMPORT_REFUSED',
          'no import folder is configured (mvirtd --volume-import-dir)',
        );
      if (!NAME_RE.test(name) || name.includes('..'))
        throw new MvirtError('IMPORT_REFUSED', `${JSON.stringify(name)} is not a plain file name`);
      const base = await realpath(importDir);
      const file = path.join(base, name);
      const st = await lstat(file).catch(() => null);
      if (!st || st.isSymbolicLink() || !st.isFile())
        throw new MvirtError(
          'IMPORT_REFUSED',
          `${name} is not a regular file in the import folder (links are not followed)`,
        );
      return file;
    },
  };
}
