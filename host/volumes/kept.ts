/**
 * Volumes whose data must stay as it is, whoever asks:
 *  - kept by a VM snapshot (store.snapshots.keeping): a read-only disk its
 *    forks attach as it is, or the template a copied overlay reads through;
 *  - a disk of a VM whose saved state expects it as it is: a suspended VM,
 *    or a fork that has not resumed from its snapshot yet (the guest's page
 *    cache in that state holds what the disk held).
 * Such a volume may be read, attached read-only and snapshotted (a qcow2
 * internal snapshot leaves the data as it is); it is not restored, resized,
 * deleted or attached read-write. Each refusal is VOLUME_IN_USE naming who
 * keeps it.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { VolumeRecord } from '../../protocol/rpc.js';
import type { Store } from '../store/index.js';

/**
 * Why the VM's next start resumes a saved state that expects its disks as
 * they are now (it is suspended, or a fork not started yet), and what ends
 * that; null when it does not.
 */
export function savedStateOf(
  store: Pick<Store, 'vms'>,
  vmId: string,
): { why: string; until: string } | null {
  const vm = store.vms.get(vmId);
  const pending = vm ? store.vms.restoreState(vmId)?.pending : null;
  if (!vm || !pending) return null;
  // A leftover of a suspend that did not finish is dropped at the next start.
  if (pending.from === 'suspend')
    return vm.state === 'suspended'
      ? { why: 'is suspended', until: 'it has resumed (or vm.stop dropped its saved state)' }
      : null;
  return {
    why: `was made from snapshot ${pending.snapshot} and has not started yet`,
    until: 'it has started (or is deleted)',
  };
}

/** VOLUME_IN_USE when a snapshot keeps the volume as it is; `what`: the refused change. */
export function keptBySnapshot(store: Pick<Store, 'snapshots'>, v: VolumeRecord, what: string) {
  const by = store.snapshots.keeping(v.id);
  if (by.length === 0) return null;
  const why = by.some((k) => k.role === 'shared')
    ? 'a read-only disk its forks attach as it is'
    : 'the template a disk it copied reads through';
  const names = by.map((k) => k.snapshot);
  return new MvirtError(
    'VOLUME_IN_USE',
    `volume ${v.name} is kept as it is by snapshot ${names.join(', ')} (${why}); ${what} once ${names.length === 1 ? 'it is' : 'they are'} deleted`,
    { details: { snapshots: names } },
  );
}

/** VOLUME_IN_USE when a VM's saved state expects the volume as it is. */
export function keptByVm(store: Pick<Store, 'vms'>, v: VolumeRecord, what: string) {
  for (const a of v.attachedTo) {
    const saved = savedStateOf(store, a.vm);
    if (saved === null) continue;
    const name = store.vms.get(a.vm)?.name ?? a.vm;
    return new MvirtError(
      'VOLUME_IN_USE',
      `volume ${v.name} is a disk of VM ${name}, which ${saved.why}: its saved state expects the disk as it is; ${what} once ${saved.until}`,
      { details: { vms: [a.vm] } },
    );
  }
  return null;
}

/** Throws the first of keptBySnapshot and keptByVm; the words of the check otherwise. */
export function requireUnkept(
  store: Pick<Store, 'vms' | 'snapshots'>,
  v: VolumeRecord,
  what: string,
): string {
  const p = keptBySnapshot(store, v, what) ?? keptByVm(store, v, what);
  if (p) throw p;
  return `volume ${v.name} is kept as it is by no snapshot and no saved VM state`;
}
