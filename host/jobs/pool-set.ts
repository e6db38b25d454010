/**
 * pool.set's checks, shared by the call and its dry run (pool-plan.ts): the
 * definition it would store. How its VMs are made: left out, `snapshot` and
 * `fromSnapshot` stay as they were (like image and size); `fromSnapshot`
 * takes the snapshot's image and size, so a size given with it, or kept with
 * it, is refused; `snapshot: true` is refused where no template can be made.
 */
import { MvirtError } from '../../protocol/errors.js';
import { TEMPLATE_SNAPSHOT_PREFIX, type ParamsOf } from '../../protocol/rpc.js';
import type { Templates } from '../snapshots/templates.js';
import type { PoolDef, PoolRepo, StoredSnapshot } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';
import type { SetCheck } from './pool-plan.js';

export interface PoolSetCheckDeps {
  repo: Pick<PoolRepo, 'get'>;
  vms: Pick<VmManager, 'defaults' | 'checkImage'>;
  /** A ready VM snapshot by id or name. */
  snapshotOf(ref: string): StoredSnapshot | undefined;
  templates?: Pick<Templates, 'unavailable'>;
  closing(): boolean;
}

export function poolSetCheck(d: PoolSetCheckDeps): (p: ParamsOf<'pool.set'>) => Promise<SetCheck> {
  const { repo, vms, snapshotOf, templates } = d;

  /** The snapshot a fromSnapshot pool forks (given now, or kept from its old definition). */
  function forkable(p: ParamsOf<'pool.set'>, ref: string): StoredSnapshot {
    if (
      p.fromSnapshot === undefined &&
      [p.image, p.vcpus, p.memoryMiB].some((x) => x !== undefined)
    )
      throw new MvirtError(
        'INVALID_PARAMS',
        `pool ${p.name}'s VMs are forks of snapshot ${ref}, which decides their image and size: give fromSnapshot another snapshot, or snapshot: false (VMs boot) or true (forks of a template) with image, vcpus or memoryMiB`,
      );
    const snap = snapshotOf(ref);
    if (!snap)
      throw new MvirtError(
        'SNAPSHOT_NOT_FOUND',
        p.fromSnapshot !== undefined
          ? `no snapshot with id or name ${ref}`
          : `pool ${p.name}'s snapshot ${ref} was deleted: give fromSnapshot another, or snapshot: false or true`,
      );
    if (snap.name.startsWith(TEMPLATE_SNAPSHOT_PREFIX))
      throw new MvirtError(
        'INVALID_PARAMS',
        `snapshot ${snap.name} is one of mvirtd's templates, which it replaces when the image changes: use snapshot: true for VMs that fork the template of the pool's image`,
      );
    if (snap.disks?.length)
      throw new MvirtError(
        'INVALID_PARAMS',
        `snapshot ${snap.name} was taken of a VM with volumes: pool VMs are ephemeral and have no disks; snapshot a VM without volumes for the pool`,
      );
    return snap;
  }

  return async function checkSet(p: ParamsOf<'pool.set'>): Promise<SetCheck> {
    if (d.closing()) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
    const old = repo.get(p.name);
    const max = p.max ?? Math.max(p.min, old?.max ?? 0, 1);
    if (max < p.min) {
      throw new MvirtError('INVALID_PARAMS', `max (${max}) must be at least min (${p.min})`);
    }
    // Left out, snapshot and fromSnapshot stay as they were (like image and size).
    const kept = p.snapshot === undefined && p.fromSnapshot === undefined;
    const fromSnapshot = p.fromSnapshot ?? (kept ? old?.fromSnapshot : undefined);
    let def: PoolDef;
    let snap: StoredSnapshot | undefined;
    if (fromSnapshot !== undefined) {
      snap = forkable(p, fromSnapshot);
      def = {
        name: p.name,
        image: snap.image,
        min: p.min,
        max,
        vcpus: snap.vcpus,
        memoryMiB: snap.memoryMiB,
        fromSnapshot: snap.id,
      };
    } else {
      const snapshot = p.snapshot ?? (kept && old?.snapshot === true);
      // Asked for now and impossible: say so rather than boot each member.
      const why = templates ? templates.unavailable() : 'mvirtd keeps no template snapshots';
      if (p.snapshot === true && why !== null)
        throw new MvirtError(
          'CAPABILITY_UNSUPPORTED',
          `snapshot: true makes pool VMs forks of a template snapshot, but ${why}`,
        );
      def = {
        name: p.name,
        image: p.image ?? old?.image ?? vms.defaults.image,
        min: p.min,
        max,
        vcpus: p.vcpus ?? old?.vcpus ?? vms.defaults.vcpus,
        memoryMiB: p.memoryMiB ?? old?.memoryMiB ?? vms.defaults.memoryMiB,
        ...(snapshot ? { snapshot: true as const } : {}),
      };
    }
    await vms.checkImage(def.image); // IMAGE_NOT_FOUND: not a pool that can never boot
    return { ...(old ? { old } : {}), def, ...(snap ? { snap } : {}) };
  };
}
