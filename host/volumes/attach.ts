/**
 * Volumes as VM disks: the attach rules (vm.create), the files a boot hands
 * to the hypervisor, and what a VM's deletion gives back. Rules:
 *  - a volume attached read-write belongs to that one VM: no other VM may
 *    attach it at all;
 *  - a volume attached read-only anywhere may be attached read-only again,
 *    never read-write;
 *  - a template of qcow2 clones is attached read-only only (a write under
 *    its overlays would change what they read), and so is a volume a VM
 *    snapshot keeps as it is (kept.ts).
 */
import type { Store, VmDisk } from '../store/index.js';
import type { DiskSpec } from '../hypervisors/types.js';
import { MvirtError } from '../../protocol/errors.js';
import { MAX_VM_DISKS, type VolumeRecord } from '../../protocol/rpc.js';
import type { VolumeFiles } from './files.js';
import { keptBySnapshot } from './kept.js';
import type { VolumeTransitions } from './transition.js';

export interface DiskRequest {
  volume: string;
  readOnly?: boolean;
}

export interface VolumeAttachDeps {
  store: Store;
  files: VolumeFiles;
  transitions: VolumeTransitions;
}

export function createVolumeAttach(d: VolumeAttachDeps) {
  const repo = d.store.volumes;

  function problem(v: VolumeRecord, readOnly: boolean): MvirtError | null {
    const writer = v.attachedTo.find((a) => !a.readOnly);
    if (writer)
      return new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is attached read-write to VM ${writer.vm}`,
        { details: { vms: [writer.vm] } },
      );
    if (!readOnly && v.attachedTo.length > 0)
      return new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is attached read-only to VM ${v.attachedTo.map((a) => a.vm).join(', ')}; attach it read-only too`,
        { details: { vms: v.attachedTo.map((a) => a.vm) } },
      );
    const clones = repo.clonesOf(v.id);
    if (!readOnly && clones.length > 0)
      return new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is the template of clone ${clones.join(', ')}; attach it read-only`,
        { details: { clones } },
      );
    return readOnly ? null : keptBySnapshot(d.store, v, 'attach it read-only, or read-write');
  }

  /** The volume and its templates, nearest first; the ids that are gone, where the chain breaks. */
  function chain(volumeId: string): { found: VolumeRecord[]; missing: string | null } {
    const found: VolumeRecord[] = [];
    for (let id: string | null = volumeId; id !== null;) {
      const v = repo.get(id);
      if (!v) return { found, missing: id };
      found.push(v);
      id = v.backing;
    }
    return { found, missing: null };
  }

  /** One disk's files, checked (never a link), with format, serial and templates. */
  async function diskSpec(disk: VmDisk): Promise<DiskSpec> {
    const { found, missing } = chain(disk.volume);
    if (missing !== null)
      throw new MvirtError(
        'VOLUME_NOT_FOUND',
        missing === disk.volume
          ? `volume ${missing} is gone`
          : `template volume ${missing} is gone`,
      );
    const [v, ...templates] = found as [VolumeRecord, ...VolumeRecord[]];
    const backing: DiskSpec['backing'] = [];
    for (const t of templates) {
      backing.push({
        path: await d.files.checkFile(t.id, t.format),
        name: d.files.nameOf(t.id, t.format),
      });
    }
    return {
      path: await d.files.checkFile(v.id, v.format),
      name: d.files.nameOf(v.id, v.format),
      readOnly: disk.readOnly,
      shared: disk.readOnly,
      format: v.format,
      serial: v.id,
      backing,
    };
  }

  /** attachOne's rules, checked without writing (its dry run calls this alone). */
  function checkOne(
    vmId: string,
    vmName: string,
    req: DiskRequest,
  ): { v: VolumeRecord; disk: VmDisk } {
    const v = repo.find(req.volume);
    if (!v) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id or name ${req.volume}`);
    const mine = repo.disksOf(vmId);
    if (mine.some((x) => x.volume === v.id))
      throw new MvirtError('VOLUME_IN_USE', `volume ${v.name} is already a disk of VM ${vmName}`, {
        details: { vms: [vmId] },
      });
    if (mine.length >= MAX_VM_DISKS)
      throw new MvirtError(
        'INVALID_PARAMS',
        `VM ${vmName} has ${mine.length} disks, the most a VM may have`,
      );
    const disk = { volume: v.id, readOnly: req.readOnly ?? false };
    const p = problem(v, disk.readOnly);
    if (p) throw p;
    return { v, disk };
  }

  return {
    checkOne,
    /**
     * Resolve and check a VM's disks (names or ids → ids). Call again inside
     * the creating transaction: `attach` re-checks synchronously.
     */
    resolve(disks: readonly DiskRequest[]): VmDisk[] {
      return disks.map((r) => {
        const v = repo.find(r.volume);
        if (!v) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id or name ${r.volume}`);
        const readOnly = r.readOnly ?? false;
        const p = problem(v, readOnly);
        if (p) throw p;
        return { volume: v.id, readOnly };
      });
    },

    /**
     * Inside vm.create's transaction (synchronous, so no other attach slips
     * in between check and write): the disk rows and each volume's change.
     */
    attach(vmId: string, vmName: string, disks: readonly VmDisk[]): void {
      for (const disk of disks) {
        const v = repo.get(disk.volume);
        if (!v) throw new MvirtError('VOLUME_NOT_FOUND', `volume ${disk.volume} was deleted`);
        const p = problem(v, disk.readOnly);
        if (p) throw p;
      }
      repo.addDisks(vmId, disks);
      for (const disk of disks)
        d.transitions.change(disk.volume, {
          to: 'attached',
          what: `attached to VM ${vmName}${disk.readOnly ? ' read-only' : ''}`,
          objects: [vmId],
          data: { vm: vmId, readOnly: disk.readOnly },
        });
    },

    /**
     * vm.create's transaction rolled back after attach() ran: the records it
     * published no longer hold; publish what the database says again.
     */
    republish(disks: readonly VmDisk[]): void {
      for (const disk of disks) d.transitions.publish(disk.volume, repo.get(disk.volume));
    },

    /** After a VM's rows are gone: the volumes it held, available again when nobody else holds them. */
    released(vmId: string, vmName: string, disks: readonly VmDisk[]): void {
      for (const disk of disks) {
        const v = repo.get(disk.volume);
        if (!v) continue;
        d.transitions.change(disk.volume, {
          ...(v.attachedTo.length === 0 ? { to: 'available' as const } : {}),
          what: `detached from VM ${vmName} (deleted)`,
          objects: [vmId],
        });
      }
    },

    /**
     * vm.attachDisk (hot-plug, or recorded for the next boot), in one
     * synchronous transaction so no other attach slips in between check and
     * write: the rules of vm.create, plus: not twice in one VM, at most
     * MAX_VM_DISKS. Returns the disk as recorded.
     */
    attachOne(vmId: string, vmName: string, req: DiskRequest, how: string): VmDisk {
      let disk!: VmDisk;
      d.store.db.transaction(() => {
        const { v, disk: checked } = checkOne(vmId, vmName, req);
        disk = checked;
        d.transitions.change(v.id, {
          to: 'attached',
          what: `attached to VM ${vmName}${disk.readOnly ? ' read-only' : ''} (${how})`,
          objects: [vmId],
          data: { vm: vmId, readOnly: disk.readOnly, how },
          write: () => repo.appendDisk(vmId, disk),
        });
      })();
      return disk;
    },

    /**
     * vm.detachDisk's record (the disk is no longer in the VM, or the VM is
     * down): its row goes, and the volume is available again when nobody else
     * holds it. DISK_NOT_ATTACHED when the VM did not have it.
     */
    detachOne(vmId: string, vmName: string, volumeId: string, how: string): void {
      // Synchronous from the check to the write: nobody attaches in between.
      const v = repo.get(volumeId);
      if (!v || !v.attachedTo.some((a) => a.vm === vmId))
        throw new MvirtError(
          'DISK_NOT_ATTACHED',
          `volume ${v?.name ?? volumeId} is not a disk of VM ${vmName}`,
        );
      const others = v.attachedTo.filter((a) => a.vm !== vmId).length;
      d.transitions.change(volumeId, {
        ...(others === 0 ? { to: 'available' as const } : {}),
        what: `detached from VM ${vmName} (${how})`,
        objects: [vmId],
        data: { vm: vmId, how },
        write: () => {
          repo.removeDisk(vmId, volumeId);
        },
      });
    },

    /**
     * The file names a disk brings into the VM's folder (itself and its
     * templates), without touching the files: what a detach may unlink once
     * no other disk of the VM needs them.
     */
    linkNames(volumeId: string): string[] {
      return chain(volumeId).found.map((v) => d.files.nameOf(v.id, v.format));
    },

    /** The hypervisor's view of one disk (see bootDisks). */
    diskSpec,

    /**
     * The hypervisor's view of a VM's disks for one boot, in order: each
     * file checked (never a link), with its format and serial; a qcow2
     * overlay brings its template (read-only) along in `backing`.
     */
    async bootDisks(vmId: string): Promise<DiskSpec[]> {
      const out: DiskSpec[] = [];
      for (const disk of repo.disksOf(vmId)) out.push(await diskSpec(disk));
      return out;
    },
  };
}

export type VolumeAttach = ReturnType<typeof createVolumeAttach>;
