/**
 * A fork's disks (vm.create {fromSnapshot} of a snapshot of a VM with
 * volumes): the same disks in the same order with the same readOnly as the
 * source had, so that the device layout matches the saved state (the
 * hypervisor checks a digest of it):
 *  - a disk the snapshot copied: a new volume `<fork name>-disk<n>`, a full
 *    sparse copy of the snapshot's copy, of the same format (and, for a
 *    copied overlay clone, a clone of the same template), with the caller's
 *    owner label;
 *  - a shared disk (read-only in the source): the volume itself, read-only.
 *
 * Full copies, not qcow2 overlays on the snapshot's copy: an overlay's
 * backing reference must resolve both in the volumes folder (qemu-img
 * resize, convert and snapshot open the backing file) and, by plain name, in
 * the VM's folder where QEMU runs confined; a file in the snapshot's folder
 * is in neither. An overlay would also turn a raw disk into a qcow2 one,
 * which the layout digest tells apart. So a fork owns its disks outright,
 * snapshot.delete never waits for them, and a copy costs what the volume
 * has written (cp skips holes; a copied overlay only its own clusters).
 */
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { PlanCommand } from '../../protocol/plan.js';
import type { VolumeRecord } from '../../protocol/rpc.js';
import { NAME_RE } from '../../protocol/topics.js';
import type { PlanBuilder } from '../plan.js';
import { checkHashes, type ManifestDisk } from '../snapshots/files.js';
import type { StoredSnapshot, VmDisk } from '../store/index.js';
import type { CopyIn } from '../volumes/copies.js';
import type { VmContext } from './context.js';

/** What forks need of the volume manager (host/volumes/manager.ts). */
export interface ForkVolumes {
  /** A new volume whose file is a sparse copy of a snapshot's disk (in the volume queue). */
  copyIn(p: CopyIn): Promise<VolumeRecord>;
  /** The checks of copies made one after another, and their commands (a dry run). */
  planCopies(list: readonly CopyIn[]): Promise<{ admitted: string[]; commands: PlanCommand[] }>;
  delete(ref: string): Promise<unknown>;
}

/** One disk of one fork: a copy to make, or a shared volume to attach read-only. */
type ForkDisk = { kept: 'copy'; copy: CopyIn } | { kept: 'shared'; volume: string };

/** A fork's disk copies are named after it: `<fork>-disk<n>`, n from 1. */
export const forkDiskName = (fork: string, position: number): string =>
  `${fork}-disk${position + 1}`;

export function forkDisksPart(ctx: VmContext) {
  function copies(): ForkVolumes {
    if (!ctx.volumes?.copies)
      throw new MvirtError('CAPABILITY_UNSUPPORTED', 'this mvirtd has no volume storage');
    return ctx.volumes.copies;
  }

  function layout(snap: StoredSnapshot, disks: readonly ManifestDisk[], fork: string) {
    const dir = ctx.snapshotFiles.dirOf(snap.id);
    return disks.map((x): ForkDisk => {
      if (x.kept === 'shared') return { kept: 'shared', volume: x.volume.id };
      const name = forkDiskName(fork, x.position);
      if (!NAME_RE.test(name))
        throw new MvirtError(
          'INVALID_PARAMS',
          `VM ${fork}'s disk ${x.position + 1} would be volume ${name}, not a valid name (at most 64 characters); give the VMs a shorter name`,
        );
      return {
        kept: 'copy',
        copy: {
          name,
          from: path.join(dir, x.file),
          format: x.format,
          sizeBytes: x.sizeBytes,
          backing: x.template?.id ?? null,
          what: `snapshot ${snap.name}'s disk ${x.position + 1}`,
        },
      };
    });
  }

  /**
   * The checks every fork's disks need, before anything is made: the shared
   * volumes and the templates still there (the snapshot keeps them), each
   * copy intact (its sha256, hashed once per daemon run), names valid.
   */
  async function check(
    snap: StoredSnapshot,
    disks: readonly ManifestDisk[],
    forks: readonly string[],
  ) {
    const admitted: string[] = [];
    if (disks.length === 0) return { admitted, layouts: forks.map(() => [] as ForkDisk[]) };
    copies();
    for (const x of disks) {
      const keptId = x.kept === 'shared' ? x.volume.id : x.template?.id;
      if (keptId !== undefined && !ctx.store.volumes.get(keptId))
        throw new MvirtError(
          'SNAPSHOT_INVALID',
          `snapshot ${snap.name}: volume ${keptId}, which its disk ${x.position + 1} needs, is gone`,
        );
    }
    const hashes = Object.fromEntries(
      disks.flatMap((x) => (x.kept === 'copy' ? [[x.file, x.sha256]] : [])),
    );
    await checkHashes(ctx.snapshotFiles.dirOf(snap.id), hashes, `snapshot ${snap.name}`);
    admitted.push(
      `snapshot ${snap.name}'s ${disks.length} disk${disks.length === 1 ? '' : 's'}: copies intact, shared volumes there`,
    );
    return { admitted, layouts: forks.map((f) => layout(snap, disks, f)) };
  }

  /** Make one fork's disks, in order; the volumes made are removed again if one fails. */
  async function make(disks: readonly ForkDisk[]): Promise<{ disks: VmDisk[]; made: string[] }> {
    const made: string[] = [];
    const out: VmDisk[] = [];
    try {
      for (const x of disks) {
        if (x.kept === 'shared') out.push({ volume: x.volume, readOnly: true });
        else {
          const v = await copies().copyIn(x.copy);
          made.push(v.id);
          out.push({ volume: v.id, readOnly: false });
        }
      }
    } catch (err) {
      await drop(made);
      throw err;
    }
    return { disks: out, made };
  }

  /** Remove volumes a fork was given (its VM deleted first, or never made). */
  async function drop(made: readonly string[]): Promise<void> {
    for (const id of made)
      await copies()
        .delete(id)
        .catch((err: unknown) =>
          ctx.log.warn({ err, volume: id }, "cannot remove a fork's volume after a failure"),
        );
  }

  /** A dry run's part: the copies' checks (names, room for all), commands, files and changes. */
  async function plan(b: PlanBuilder, forks: readonly string[], layouts: ForkDisk[][]) {
    const list = layouts.flat().flatMap((x) => (x.kept === 'copy' ? [x.copy] : []));
    if (list.length === 0) return;
    const r = await copies().planCopies(list);
    for (const a of r.admitted) b.admit(a);
    b.step("make each VM's disks: copies of the snapshot's");
    for (const c of r.commands) b.command(c);
    const volumes = ctx.volumes!.files.dir;
    b.create(...list.map((c) => path.join(volumes, `vol-<new>.${c.format}`)));
    for (const [i, fork] of forks.entries())
      for (const x of layouts[i]!)
        b.change(
          x.kept === 'copy'
            ? `volume ${x.copy.name}: copied from ${x.copy.what} (${x.copy.format}, ${x.copy.sizeBytes} bytes), attached to VM ${fork}`
            : `volume ${x.volume}: attached to VM ${fork} read-only`,
        );
  }

  return { check, make, drop, plan };
}

export type ForkDisksPart = ReturnType<typeof forkDisksPart>;
