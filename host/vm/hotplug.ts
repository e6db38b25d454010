/**
 * vm.attachDisk and vm.detachDisk. On a stopped VM they only change the
 * record (the disk comes or goes at the next boot); a VM whose next start
 * resumes a saved state (suspended, or a fork not started yet) is refused. On a running one they are
 * named steps with rollback (steps.ts):
 *
 *   attach: record → link → hand over → blockdev-add → device_add
 *   detach: device_del (until the hypervisor says the guest let go) →
 *           blockdev-del → unlink → record
 *
 * The record comes first on attach: the attach rules (volumes/attach.ts) are
 * checked and the volume claimed in one synchronous transaction before
 * anything is plugged, so two VMs cannot both hot-plug a volume read-write.
 * On detach it comes last: a guest that does not release the disk (DISK_BUSY)
 * leaves it attached and recorded, and every hypervisor step is safe to run
 * again (a device or node already gone is no error), so a retry, after a
 * daemon restart too, finishes the job. The disk's hypervisor names derive
 * from the volume id (hypervisors/qemu/hotplug.ts): nothing else is stored.
 */
import { requireCapability } from '../hypervisors/index.js';
import type { DiskHotplug, DiskSpec, Hypervisor } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';
import type { VmDisk } from '../store/index.js';
import type { VolumeAttach } from '../volumes/attach.js';
import { savedStateOf } from '../volumes/kept.js';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord, VolumeRecord } from '../../protocol/rpc.js';
import { isInactiveVm, isUpVm } from '../../protocol/states.js';
import type { VmContext } from './context.js';
import { linkDisk, unlinkDisk, type VmVolumes } from './disks.js';
import { runSteps, StepError, type Step } from './steps.js';

/** How long a detach waits for the guest to release the disk by default. */
export const DETACH_TIMEOUT_MS = 30_000;

export interface HotplugVolumes extends VmVolumes {
  attach: VmVolumes['attach'] & Pick<VolumeAttach, 'diskSpec' | 'linkNames'>;
}

/** One disk of one running VM, for the steps. */
export interface PlugCtx {
  /** The VM's folder. */
  dir: string;
  hp: DiskHotplug;
  volumes: HotplugVolumes;
  disk: VmDisk;
  /** Link names the VM's other disks still need (kept on unlink). */
  keep(): ReadonlySet<string>;
  /** The record's change (attach: claim; detach: release), and its undo on attach. */
  record(): void;
  unrecord(): void;
  log: MvirtLogger;
  /** How long detach waits for the guest. */
  timeoutMs: number;
  linked?: DiskSpec;
}

const unlink = (c: PlugCtx): void =>
  unlinkDisk(c.volumes, c.dir, c.volumes.attach.linkNames(c.disk.volume), c.keep(), c.log);

export const ATTACH_STEPS: readonly Step<PlugCtx>[] = [
  { name: 'record', run: (c) => c.record(), undo: (c) => c.unrecord() },
  {
    name: 'link',
    run: async (c) => {
      c.linked = await linkDisk(c.dir, await c.volumes.attach.diskSpec(c.disk));
    },
    // Unlinking gives the file back to mvirtd first: this also undoes the hand-over.
    undo: unlink,
  },
  { name: 'hand over', run: (c) => c.hp.handOver(c.linked!) },
  {
    name: 'blockdev-add',
    run: (c) => c.hp.addBackend(c.linked!),
    undo: (c) => c.hp.removeBackend(c.disk.volume),
  },
  // The last step: nothing after it can fail and call for its undo.
  { name: 'device_add', run: (c) => c.hp.plug(c.linked!) },
];

/**
 * No undo: a device the guest released cannot be given back to it unasked.
 * A failure after device_del leaves the disk recorded; detach again finishes.
 */
export const DETACH_STEPS: readonly Step<PlugCtx>[] = [
  { name: 'device_del', run: (c) => c.hp.unplug(c.disk.volume, c.timeoutMs) },
  { name: 'blockdev-del', run: (c) => c.hp.removeBackend(c.disk.volume) },
  { name: 'unlink', run: unlink },
  { name: 'record', run: (c) => c.record() },
];

/** Run the steps; the failing step's own error, typed. */
export async function runDiskSteps(steps: readonly Step<PlugCtx>[], c: PlugCtx): Promise<void> {
  try {
    await runSteps(steps, c, c.log);
  } catch (err) {
    const inner = err instanceof StepError ? err.error : err;
    if (inner instanceof MvirtError) throw inner;
    throw new MvirtError(
      'HYPERVISOR_ERROR',
      `${err instanceof StepError ? err.step : 'disk'}: ${String(inner)}`,
      { cause: inner },
    );
  }
}

export function storage(ctx: VmContext) {
  if (!ctx.volumes)
    throw new MvirtError('CAPABILITY_UNSUPPORTED', 'this mvirtd has no volume storage');
  return ctx.volumes;
}

/** The running VM's hot-plug handle, or why there is none (nothing changed yet). */
export function hotplugOf(
  ctx: VmContext,
  vm: VmRecord,
  what: string,
): { hp: DiskHotplug; hv: Hypervisor; dir: string; log: MvirtLogger } {
  const hv = ctx.hypervisors.get(vm.backend);
  if (hv) requireCapability(hv, 'hotplugDisks');
  const live = ctx.liveOf(vm.id);
  if (!isUpVm(vm.state) || !live?.running?.hotplug)
    throw new MvirtError(
      'VM_BAD_STATE',
      `VM ${vm.name} is ${vm.state}; ${what} a disk while it is up (ready, busy, running) or stopped`,
      { details: { state: vm.state } },
    );
  return { hp: live.running.hotplug, hv: live.hv, dir: live.dir, log: live.log };
}

/**
 * VM_BAD_STATE when the VM's next start resumes a saved state (it is
 * suspended, or a fork not started yet): that state expects the disks it was
 * saved with, in that order.
 */
export function requireNoSavedState(ctx: VmContext, vm: VmRecord, what: string): void {
  const saved = savedStateOf(ctx.store, vm.id);
  if (saved === null) return;
  throw new MvirtError(
    'VM_BAD_STATE',
    `VM ${vm.name} ${saved.why}: the saved state it resumes from expects the disks it had; ${what} a disk once ${saved.until}`,
    { details: { state: vm.state } },
  );
}

/** The VM's disk of this volume (detach's check): VOLUME_NOT_FOUND, DISK_NOT_ATTACHED. */
export function diskOf(
  ctx: VmContext,
  vm: VmRecord,
  volumeRef: string,
): { vol: VolumeRecord; disk: VmDisk } {
  const vol = ctx.store.volumes.find(volumeRef);
  if (!vol) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id or name ${volumeRef}`);
  const disk = ctx.store.volumes.disksOf(vm.id).find((d) => d.volume === vol.id);
  if (!disk)
    throw new MvirtError('DISK_NOT_ATTACHED', `volume ${vol.name} is not a disk of VM ${vm.name}`);
  return { vol, disk };
}

/** What a disk leaving the VM must not unlink: the other disks' files and templates. */
export const keepFor =
  (ctx: VmContext, vmId: string, volumeId: string) => (): ReadonlySet<string> => {
    const v = storage(ctx);
    return new Set(
      ctx.store.volumes
        .disksOf(vmId)
        .filter((d) => d.volume !== volumeId)
        .flatMap((d) => v.attach.linkNames(d.volume)),
    );
  };

export function diskOperations(ctx: VmContext) {
  const { vms } = ctx;

  const done = (id: string): VmRecord => {
    const rec = vms.get(id)!;
    ctx.publishState(rec); // its disks changed
    return rec;
  };

  return {
    async attachDisk(p: { vm: string; volume: string; readOnly?: boolean }): Promise<VmRecord> {
      const v = storage(ctx);
      const { id } = ctx.find(p.vm);
      return ctx.withLock(id, async () => {
        const vm = ctx.find(id); // deleted meanwhile: VM_NOT_FOUND
        requireNoSavedState(ctx, vm, 'attach');
        const req = { volume: p.volume, readOnly: p.readOnly ?? false };
        if (isInactiveVm(vm.state)) {
          v.attach.attachOne(id, vm.name, req, 'for its next boot');
          return done(id);
        }
        const h = hotplugOf(ctx, vm, 'attach');
        let disk: VmDisk | undefined;
        const c: PlugCtx = {
          ...h,
          volumes: v,
          get disk() {
            return disk!;
          },
          keep: () => keepFor(ctx, id, disk!.volume)(),
          record: () => {
            disk = v.attach.attachOne(id, vm.name, req, 'hot-plugged');
          },
          unrecord: () => v.attach.detachOne(id, vm.name, disk!.volume, 'hot-plug rolled back'),
          timeoutMs: DETACH_TIMEOUT_MS,
        };
        try {
          await runDiskSteps(ATTACH_STEPS, c);
        } catch (err) {
          ctx.publishState(vms.get(id)!); // the claim was rolled back
          throw err;
        }
        return done(id);
      });
    },

    async detachDisk(p: { vm: string; volume: string; timeoutMs?: number }): Promise<VmRecord> {
      const v = storage(ctx);
      const { id } = ctx.find(p.vm);
      return ctx.withLock(id, async () => {
        const vm = ctx.find(id);
        const { vol, disk } = diskOf(ctx, vm, p.volume);
        requireNoSavedState(ctx, vm, 'detach');
        if (isInactiveVm(vm.state)) {
          v.attach.detachOne(id, vm.name, vol.id, 'for its next boot');
          return done(id);
        }
        const c: PlugCtx = {
          ...hotplugOf(ctx, vm, 'detach'),
          volumes: v,
          disk,
          keep: keepFor(ctx, id, vol.id),
          record: () => v.attach.detachOne(id, vm.name, vol.id, 'hot-unplugged'),
          unrecord: () => undefined,
          timeoutMs: p.timeoutMs ?? DETACH_TIMEOUT_MS,
        };
        await runDiskSteps(DETACH_STEPS, c);
        return done(id);
      });
    },
  };
}
