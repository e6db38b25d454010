/**
 * A VM's volumes at boot. QEMU runs as the VM's own uid and may reach only
 * its VM's folder (hypervisors/qemu/confine.ts): the volumes folder stays
 * mvirtd's (0700). So each boot hard-links the VM's volume files (and a qcow2
 * overlay's templates, which QEMU finds through the overlay's relative
 * backing reference) into the VM's folder; the confiner hands those to the
 * VM's uid for the run; when the process ends the files are given back to
 * mvirtd and the links removed. A hard link is the same file: what the guest
 * writes is in the volume.
 */
import { chownSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import { link, rm } from 'node:fs/promises';
import path from 'node:path';
import type { DiskSpec } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';
import type { VolumeAttach } from '../volumes/attach.js';
import type { VolumeFiles } from '../volumes/files.js';
import { MvirtError } from '../../protocol/errors.js';

export interface VmVolumes {
  attach: Pick<VolumeAttach, 'bootDisks'>;
  files: Pick<VolumeFiles, 'checkFile' | 'pathOf'>;
}

const LINK_RE = /^(vol-[0-9a-f]{12})\.(raw|qcow2)$/;

async function linkInto(file: string, to: string): Promise<void> {
  await rm(to, { force: true }); // a leftover of a crash; rm never follows a link
  try {
    await link(file, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EXDEV')
      throw new MvirtError(
        'BOOT_FAILED',
        'the volumes folder and the VM folders must be on one file system (volumes are hard-linked into the VM folder)',
        { cause: err },
      );
    throw err;
  }
}

/** Where linkDisk puts a disk and its templates in the VM's folder (a dry run shows these). */
export function linkedSpec(dir: string, d: DiskSpec): DiskSpec {
  return {
    ...d,
    path: path.join(dir, d.name ?? path.basename(d.path)),
    backing: (d.backing ?? []).map((b) => ({ path: path.join(dir, b.name), name: b.name })),
  };
}

/** One disk (and its templates) linked into the VM's folder: boot and hot-plug alike. */
export async function linkDisk(dir: string, d: DiskSpec): Promise<DiskSpec> {
  const to = linkedSpec(dir, d);
  for (const [i, b] of (d.backing ?? []).entries()) await linkInto(b.path, to.backing![i]!.path);
  await linkInto(d.path, to.path);
  return to;
}

/** The VM's disks for this boot, linked into its folder. */
export async function linkDisks(v: VmVolumes, vmId: string, dir: string): Promise<DiskSpec[]> {
  const disks = await v.attach.bootDisks(vmId);
  const out: DiskSpec[] = [];
  for (const d of disks) out.push(await linkDisk(dir, d));
  return out;
}

/**
 * One link of the folder given back and removed (a name that is not a volume
 * link is left alone). Files are given back through their own path in the
 * volumes folder, never through the link: the VM's user owns its folder and
 * could have put a link to any host file there.
 */
function unlinkOne(v: VmVolumes, dir: string, name: string, log: MvirtLogger): void {
  const m = LINK_RE.exec(name);
  if (!m) return;
  const [, id, format] = m as unknown as [string, string, 'raw' | 'qcow2'];
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  try {
    const own = v.files.pathOf(id, format);
    const st = lstatSync(own, { throwIfNoEntry: false });
    if (uid === 0 && st?.isFile()) chownSync(own, uid, gid);
  } catch (err) {
    log.warn({ err, volume: id }, 'cannot give a volume file back to mvirtd');
  }
  rmSync(path.join(dir, name), { force: true });
}

/**
 * Hot-unplug: the links of one detached disk (`names`: the file and its
 * templates, VolumeAttach.linkNames) given back and removed, except those a
 * disk still in the VM needs (`keep`: a template two overlays share, or one
 * also attached read-only by itself).
 */
export function unlinkDisk(
  v: VmVolumes,
  dir: string,
  names: readonly string[],
  keep: ReadonlySet<string>,
  log: MvirtLogger,
): void {
  for (const name of names) if (!keep.has(name)) unlinkOne(v, dir, name, log);
}

/**
 * Give the volume files back to mvirtd and remove their links. Synchronous on
 * purpose (as removeSockets in exit.ts): a boot right after an exit links the
 * same names, and a late unlink would remove the new boot's disks.
 */
export function unlinkDisks(v: VmVolumes, dir: string, log: MvirtLogger): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return; // no folder, no links
  }
  for (const name of names) unlinkOne(v, dir, name, log);
}
