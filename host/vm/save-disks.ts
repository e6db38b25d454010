/**
 * A VM's volumes in its saved state. A saved state loads only into a VM with
 * the same disks in the same order as when it was saved (the hypervisor
 * checks a digest of the layout), and the guest's memory in it holds what
 * it had read from and was about to write to each disk: a snapshot keeps the
 * disks as they were at that instant.
 *
 * vm.snapshot copies each volume the VM may write (`cp --sparse=always`,
 * holes stay holes) into the snapshot's folder while the VM is paused for
 * the state save: after the hypervisor wrote the state and before it
 * resumes, the guest cannot write, and QEMU flushed its block devices when
 * the migration completed. The copy is what the pause adds: it is as long
 * as the volume's written blocks take to copy (measured: see the audit
 * event's diskMs). A read-only disk is not copied: it cannot change while
 * attached read-only, and the snapshot keeps it so afterwards (its forks
 * attach it as it is). A qcow2 overlay clone is copied as it is, naming
 * its template: copying it with its backing chain resolved would read the
 * whole template inside the pause, while the template cannot change anyway
 * (a template of clones is read-only to everyone) and the snapshot keeps it
 * so: the forks' volumes are then clones of the same template.
 *
 * vm.suspend copies nothing: the VM's volumes stay attached to it, and
 * nothing may change them until it resumes (volumes/kept.ts, and
 * vm.attachDisk/detachDisk refuse a suspended VM).
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord } from '../../protocol/rpc.js';
import type { StateSpec } from '../hypervisors/types.js';
import { diskFileName, type ManifestDisk } from '../snapshots/files.js';
import { copySparse } from '../sparse-copy.js';
import type { SnapshotVolumeRole } from '../store/index.js';
import type { VmContext } from './context.js';

type CopiedDisk = Extract<ManifestDisk, { kept: 'copy' }>;
type SharedDisk = Extract<ManifestDisk, { kept: 'shared' }>;

/** A disk as the manifest records it, before its copy is hashed. */
export type SavedDisk = Omit<CopiedDisk, 'sha256'> | SharedDisk;

/** One volume disk of the VM, resolved: what the manifest records, and the file to copy. */
export type DiskToSave =
  | {
      kept: 'copy';
      disk: Omit<CopiedDisk, 'sha256' | 'bytes'>;
      /** The volume's own file (checked: a regular file in the volumes folder). */
      source: string;
    }
  | { kept: 'shared'; disk: SharedDisk };

/**
 * The VM's volume disks, in order, resolved for a save. VM_BAD_STATE when
 * they are not those it was launched with (hot-plugged or detached since):
 * a hot-plugged disk sits elsewhere in the machine than the same disk given
 * at launch, so the state would load into no VM.
 */
export async function disksToSave(
  ctx: VmContext,
  vm: VmRecord,
  spec: StateSpec,
  what: string,
): Promise<DiskToSave[]> {
  const launched = spec.disks
    .filter((d) => d.serial !== undefined)
    .map((d) => `${d.serial}${d.readOnly ? ':ro' : ''}`);
  const disks = ctx.store.volumes.disksOf(vm.id);
  const now = disks.map((d) => `${d.volume}${d.readOnly ? ':ro' : ''}`);
  if (launched.join() !== now.join())
    throw new MvirtError(
      'VM_BAD_STATE',
      `VM ${vm.name}'s disks changed since it was started (a disk was attached or detached while it ran): its state would load into no VM launched with its disks; stop and start it, then ${what} it`,
      { details: { state: vm.state, launched, now } },
    );
  const out: DiskToSave[] = [];
  for (const [position, d] of disks.entries()) {
    const v = ctx.store.volumes.get(d.volume);
    if (!v || !ctx.volumes)
      throw new MvirtError('VOLUME_NOT_FOUND', `volume ${d.volume} of VM ${vm.name} is gone`);
    const base = {
      position,
      volume: { id: v.id, name: v.name },
      format: v.format,
      sizeBytes: v.sizeBytes,
    };
    if (d.readOnly) {
      out.push({ kept: 'shared', disk: { ...base, kept: 'shared', readOnly: true } });
      continue;
    }
    const t = v.backing === null ? undefined : ctx.store.volumes.get(v.backing);
    if (v.backing !== null && !t)
      throw new MvirtError('VOLUME_NOT_FOUND', `template volume ${v.backing} is gone`);
    out.push({
      kept: 'copy',
      disk: {
        ...base,
        kept: 'copy',
        readOnly: false,
        file: diskFileName(position, v.format),
        ...(t ? { template: { id: t.id, name: t.name, format: t.format } } : {}),
      },
      source: await ctx.volumes.files.checkFile(v.id, v.format),
    });
  }
  return out;
}

/**
 * Inside the pause: copy the disks that are copied into `target`, side by
 * side. Their sizes are read from the copies.
 */
export async function copyDisks(disks: readonly DiskToSave[], target: string) {
  const started = performance.now();
  const saved = await Promise.all(
    disks.map(async (d): Promise<SavedDisk> => {
      if (d.kept === 'shared') return d.disk;
      const dst = path.join(target, d.disk.file);
      await copySparse(d.source, dst);
      return { ...d.disk, bytes: (await stat(dst)).size };
    }),
  );
  return { disks: saved, ms: Math.round(performance.now() - started) };
}

/** The volumes a snapshot keeps as they are: shared disks, and the templates of copied overlays. */
export function keptVolumes(
  disks: readonly SavedDisk[],
): { volume: string; role: SnapshotVolumeRole }[] {
  const out = new Map<string, SnapshotVolumeRole>();
  for (const d of disks) {
    if (d.kept === 'shared') out.set(d.volume.id, 'shared');
    else if (d.template && !out.has(d.template.id)) out.set(d.template.id, 'template');
  }
  return [...out].map(([volume, role]) => ({ volume, role }));
}
