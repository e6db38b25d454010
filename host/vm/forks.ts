/**
 * vm.create {fromSnapshot, count}: one or N new VMs that resume from a
 * snapshot instead of booting. Each is an ordinary VM (its own id, name,
 * address, token, topic subtree) whose first start loads the snapshot's
 * state (restore.ts); the agent inside takes the new identity it is handed.
 * A snapshot of a VM with volumes gives each fork the same disks in the
 * same order: its own copies, or the shared read-only volumes
 * (fork-disks.ts).
 */
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { DryRunPlan } from '../../protocol/plan.js';
import type { VmRecord } from '../../protocol/rpc.js';
import { createPlan } from '../plan.js';
import type { StoredSnapshot } from '../store/index.js';
import type { CreateVmParams, VmContext } from './context.js';
import { forkDisksPart } from './fork-disks.js';

export interface ForkParams {
  name: string;
  fromSnapshot: string;
  count?: number;
  wait?: boolean;
  kind?: CreateVmParams['kind'];
  metadata?: Record<string, string>;
}

export type ForkResult = VmRecord & { forks?: VmRecord[] };

/** A fork made: its VM and the volumes made for it (removed with it on a rollback). */
interface Made {
  vm: VmRecord;
  volumes: string[];
}

export function forkPart(
  ctx: VmContext,
  ops: {
    create(p: CreateVmParams): Promise<VmRecord>;
    start(ref: string, wait?: boolean): Promise<VmRecord>;
    delete(ref: string): Promise<unknown>;
  },
) {
  const forkDisks = forkDisksPart(ctx);

  function snapshotOf(ref: string): StoredSnapshot {
    const s = ctx.store.snapshots.find(ref);
    if (!s || s.state !== 'ready')
      throw new MvirtError('SNAPSHOT_NOT_FOUND', `no snapshot with id or name ${ref}`);
    return s;
  }

  /** The forks' names, free, room for all of them now, and the disks each would get. */
  async function checks(p: ForkParams) {
    const snap = snapshotOf(p.fromSnapshot);
    const count = p.count ?? 1;
    const names =
      count === 1 ? [p.name] : Array.from({ length: count }, (_, i) => `${p.name}-${i + 1}`);
    for (const n of names)
      if (ctx.vms.nameTaken(n)) throw new MvirtError('VM_EXISTS', `a VM named ${n} already exists`);
    const size = { vcpus: snap.vcpus, memoryMiB: snap.memoryMiB };
    for (let i = 0; i < count; i++) {
      const problem = ctx.admissionProblem(size, {
        vms: i,
        vcpus: i * size.vcpus,
        memoryMiB: i * size.memoryMiB,
      });
      if (problem) throw problem;
    }
    // Only a snapshot with disks needs its manifest now; the first start checks it anyway.
    const m = snap.disks?.length ? await ctx.snapshotFiles.readManifest(snap.id) : null;
    const disks = await forkDisks.check(snap, m?.disks ?? [], names);
    return { snap, names, disks };
  }

  async function createFromSnapshot(p: ForkParams): Promise<ForkResult> {
    const { snap, names, disks } = await checks(p);
    const made: Made[] = [];
    try {
      for (const [i, name] of names.entries()) {
        const d = await forkDisks.make(disks.layouts[i]!);
        try {
          made.push({ vm: await createOne(p, snap, name, d.disks), volumes: d.made });
        } catch (err) {
          await forkDisks.drop(d.made);
          throw err;
        }
      }
    } catch (err) {
      // All or none: forks recorded before the failure go again, with their volumes.
      for (const m of made) {
        await ops.delete(m.vm.id).catch(() => undefined);
        await forkDisks.drop(m.volumes);
      }
      throw err;
    }
    // Side by side: each start is its own VM's lock; the hypervisor spawns overlap.
    const started = await Promise.allSettled(
      made.map(({ vm }) =>
        ops
          .start(vm.id, p.wait ?? false)
          .then((rec) => (p.wait ? rec : (ctx.vms.get(rec.id) ?? rec))),
      ),
    );
    const failed = started.flatMap((s, i) =>
      s.status === 'rejected' ? [{ i, err: s.reason }] : [],
    );
    if (failed.length > 0) {
      // Each fork is still there to inspect or delete; the error names them all.
      const vms = made.map(({ vm }) => ({
        id: vm.id,
        name: vm.name,
        state: ctx.vms.get(vm.id)?.state,
      }));
      const first = failed[0]!.err as unknown;
      const why = first instanceof Error ? first.message : String(first);
      throw new MvirtError(
        first instanceof MvirtError ? first.code : 'BOOT_FAILED',
        `${failed.length} of ${made.length} VMs from snapshot ${snap.name} did not come up (${made[failed[0]!.i]!.vm.name}: ${why})`,
        { details: { vms }, cause: first },
      );
    }
    const all = started.map((s) => (s as PromiseFulfilledResult<VmRecord>).value);
    const [first, ...rest] = all;
    return rest.length > 0 ? { ...first!, forks: rest } : first!;
  }

  function createOne(
    p: ForkParams,
    snap: StoredSnapshot,
    name: string,
    disks: CreateVmParams['disks'] = [],
  ): Promise<VmRecord> {
    return ops
      .create({
        name,
        image: snap.image,
        vcpus: snap.vcpus,
        memoryMiB: snap.memoryMiB,
        backend: snap.backend,
        network: snap.network,
        ...(p.kind ? { kind: p.kind } : {}),
        metadata: { ...p.metadata, 'mvirt.snapshot': snap.id },
        ...(disks.length > 0 ? { disks } : {}),
      })
      .then((vm) => {
        ctx.vms.markFork(vm.id, snap.id, ctx.now());
        // The record as it is now, restoredFrom set (templates.failed() reads it).
        return ctx.vms.get(vm.id) ?? vm;
      });
  }

  /**
   * One fork, recorded and not started (templates.ts and pools start it as
   * their caller's VM). Ephemeral VMs have no disks: INVALID_PARAMS for a
   * snapshot of a VM with volumes.
   */
  async function createFork(p: ForkParams): Promise<VmRecord> {
    const snap = snapshotOf(p.fromSnapshot);
    if (snap.disks?.length)
      throw new MvirtError(
        'INVALID_PARAMS',
        `snapshot ${snap.name} was taken of a VM with volumes: its forks get copies of them, which templates and pools do not make; fork it with vm.create {fromSnapshot}`,
      );
    return createOne(p, snap, p.name);
  }

  async function plan(p: ForkParams): Promise<DryRunPlan> {
    const b = createPlan('vm.create', path.dirname(ctx.options.vmDir));
    const { snap, names, disks } = await checks(p);
    b.admit(
      `snapshot ${snap.name} is ready (${snap.vcpus} vCPUs, ${snap.memoryMiB} MiB, image ${snap.image})`,
    )
      .admit(`names ${names.join(', ')} are free`)
      .admit(`room for ${names.length} more VMs of that size`);
    for (const a of disks.admitted) b.admit(a);
    await forkDisks.plan(b, names, disks.layouts);
    b.step('record each VM', 'start each: resume from the snapshot (no boot)');
    for (const n of names) b.change(`vm ${n}: created from snapshot ${snap.name}, starting`);
    return b.done();
  }

  return { createFromSnapshot, createFork, planFromSnapshot: plan };
}
