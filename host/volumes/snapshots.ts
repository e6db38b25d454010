/**
 * Disk snapshots (`volume.snapshot|snapshots|restore|deleteSnapshot`): qcow2
 * internal snapshots, kept inside the volume's one file. The file is the only
 * record of them: `volume.snapshots` reads the list from it (qemu-img info),
 * so no table can disagree with it; the volume record carries no count.
 *
 *  - Detached (no hypervisor process has the file open): `qemu-img snapshot`.
 *  - Attached read-write to a running VM: taken or deleted live by that VM's
 *    hypervisor (RunningVm.diskSnapshot, QMP on QEMU), the guest keeps running.
 *  - Restore only while no VM runs with it: the guest's view of its disk would
 *    change under its page cache and file system.
 *  - Raw volumes are refused (SNAPSHOT_UNSUPPORTED) rather than converted:
 *    a conversion copies every byte, changes the format the owner chose and
 *    the file a stopped VM boots from; a qcow2 overlay clone (volume.clone)
 *    gives snapshots over a raw template without touching it.
 *
 * Every change runs in the volume queue (manager.ts) with the lifecycle locks
 * of the VMs the volume is attached to held: none boots or stops meanwhile.
 * Snapshots keep the volume's state; each change is an audit event through
 * transitions.change, linked to the volume and, when live, the VM.
 *
 * As in manager.ts, each change has a check part shared by the real call and
 * its dry run (`plan.*`), which runs under the same queue and locks.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { DryRunPlan, PlanCommand } from '../../protocol/plan.js';
import type { ParamsOf, VolumeRecord, VolumeSnapshot } from '../../protocol/rpc.js';
import { createPlan, type PlanBuilder } from '../plan.js';
import type { Store } from '../store/index.js';
import type { Capacity } from './capacity.js';
import type { VolumeFiles } from './files.js';
import { requireUnkept } from './kept.js';
import type { ImageSnapshot, QemuImg } from './qemu-img.js';
import type { VolumeTransitions } from './transition.js';

/** What volumes need of the VMs holding them (host/vm/disk-access.ts). */
export interface VolumeVms {
  withVmLocks<T>(ids: readonly string[], fn: () => Promise<T>): Promise<T>;
  hasProcess(id: string): boolean;
  diskSnapshot(id: string, action: 'create' | 'delete', file: string, name: string): Promise<void>;
  /** diskSnapshot's dry run: its checks, and the commands the VM's backend would get. */
  planDiskSnapshot(
    id: string,
    action: 'create' | 'delete',
    file: string,
    name: string,
  ): PlanCommand[];
}

export interface VolumeSnapshotDeps {
  store: Store;
  files: VolumeFiles;
  qemuImg: QemuImg;
  transitions: VolumeTransitions;
  capacity: Pick<Capacity, 'requireDisk'>;
  /** Without it (tests, tools) no VM is ever running. */
  vms?: VolumeVms;
  /** The manager's one-change-at-a-time queue. */
  serial<T>(fn: () => Promise<T>): Promise<T>;
  find(ref: string): VolumeRecord;
  /** Plans show paths relative to it. */
  dataDir: string;
}

const toRecord = (s: ImageSnapshot): VolumeSnapshot => ({
  name: s.name,
  id: s.id,
  vmStateBytes: s.vmStateBytes,
  createdAt: new Date(s.dateSec * 1000).toISOString(),
});

export function createVolumeSnapshots(d: VolumeSnapshotDeps) {
  const { store, files, qemuImg, transitions } = d;
  const repo = store.volumes;
  const running = (vm: string): boolean => d.vms?.hasProcess(vm) ?? false;
  const now = (): string => new Date().toISOString();

  function qcow2Only(v: VolumeRecord): void {
    if (v.format !== 'qcow2')
      throw new MvirtError(
        'SNAPSHOT_UNSUPPORTED',
        `volume ${v.name} is ${v.format}; only qcow2 volumes keep snapshots: create a qcow2 volume, or a qcow2 overlay clone of this one (mvirt volume clone ${v.name} NEW), and snapshot that`,
        { details: { format: v.format } },
      );
  }

  /** The VMs of v's clones (at any depth) that run: their hypervisor holds v's file open as a template. */
  function runningCloneVms(v: VolumeRecord): string[] {
    const out: string[] = [];
    const todo = repo.clonesOf(v.id);
    for (let id = todo.pop(); id !== undefined; id = todo.pop()) {
      const c = repo.get(id);
      if (!c) continue;
      out.push(...c.attachedTo.map((a) => a.vm).filter(running));
      todo.push(...repo.clonesOf(id));
    }
    return out;
  }

  /**
   * fn on a qcow2 volume, in the queue, with its VMs' locks held; v is read
   * again under the locks and the file checked (never a link).
   */
  function locked<T>(
    ref: string,
    fn: (v: VolumeRecord, file: string, admitted: string[]) => Promise<T>,
  ): Promise<T> {
    return d.serial(async () => {
      const first = d.find(ref);
      qcow2Only(first);
      const held = first.attachedTo.map((a) => a.vm);
      const run = async (): Promise<T> => {
        const v = d.find(first.id);
        const late = v.attachedTo.filter((a) => !held.includes(a.vm)).map((a) => a.vm);
        if (late.length > 0)
          throw new MvirtError(
            'VOLUME_IN_USE',
            `volume ${v.name} was attached to VM ${late.join(', ')} meanwhile; try again`,
            { details: { vms: late } },
          );
        const file = await files.checkFile(v.id, v.format);
        return fn(v, file, [
          `volume ${v.name} is qcow2`,
          `volume ${v.name}'s file is a regular file in the volumes folder`,
        ]);
      };
      return d.vms ? d.vms.withVmLocks(held, run) : run();
    });
  }

  async function snapshotsOf(file: string): Promise<ImageSnapshot[]> {
    return (await qemuImg.info(file, 'qcow2')).snapshots;
  }

  async function existing(v: VolumeRecord, file: string, name: string): Promise<ImageSnapshot> {
    const s = (await snapshotsOf(file)).find((x) => x.name === name);
    if (!s)
      throw new MvirtError('SNAPSHOT_NOT_FOUND', `volume ${v.name} has no snapshot ${name}`, {
        details: { snapshot: name },
      });
    return s;
  }

  /**
   * Who would write the snapshot: the VM whose hypervisor has the volume open
   * read-write (live), or null (qemu-img on the file). VOLUME_IN_USE when only
   * read-only openers or running clones hold it: their QEMU cannot write it
   * and qemu-img must not write under them.
   */
  function writer(v: VolumeRecord): string | null {
    const open = v.attachedTo.filter((a) => running(a.vm));
    const rw = open.find((a) => !a.readOnly);
    if (rw) return rw.vm;
    const ro = [...open.map((a) => a.vm), ...runningCloneVms(v)];
    if (ro.length > 0)
      throw new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is open read-only in running VM ${ro.join(', ')}; change its snapshots once they are stopped`,
        { details: { vms: ro } },
      );
    return null;
  }

  async function checkSnapshot(v: VolumeRecord, file: string, name: string, admitted: string[]) {
    const before = await qemuImg.info(file, 'qcow2');
    if (before.snapshots.some((s) => s.name === name))
      throw new MvirtError('SNAPSHOT_EXISTS', `volume ${v.name} has a snapshot ${name}`, {
        details: { snapshot: name },
      });
    admitted.push(`volume ${v.name} has no snapshot ${name} yet`);
    const vm = writer(v);
    admitted.push(writerWords(v, vm));
    // The snapshot itself is a copy of the cluster tables; from then on each
    // cluster the guest rewrites is copied, up to what the file holds now.
    admitted.push(await d.capacity.requireDisk(before.actualSize));
    return { vm };
  }

  async function checkRestore(v: VolumeRecord, file: string, name: string, admitted: string[]) {
    const up = v.attachedTo.map((a) => a.vm).filter(running);
    if (up.length > 0)
      throw new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is attached to running VM ${up.join(', ')}; restore it once the VM is stopped`,
        { details: { vms: up } },
      );
    const clones = repo.clonesOf(v.id);
    if (clones.length > 0)
      throw new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is the template of clone ${clones.join(', ')}; a restore would change what they read`,
        { details: { clones } },
      );
    const unkept = requireUnkept(store, v, 'restore it');
    await existing(v, file, name);
    admitted.push(
      `volume ${v.name} is attached to no running VM`,
      `volume ${v.name} is no clone's template`,
      unkept,
      `volume ${v.name} has a snapshot ${name}`,
    );
  }

  async function checkDeleteSnapshot(
    v: VolumeRecord,
    file: string,
    name: string,
    admitted: string[],
  ) {
    await existing(v, file, name);
    admitted.push(`volume ${v.name} has a snapshot ${name}`);
    const vm = writer(v);
    admitted.push(writerWords(v, vm));
    return { vm };
  }

  function writerWords(v: VolumeRecord, vm: string | null): string {
    return vm !== null
      ? `volume ${v.name} is open read-write in running VM ${vm}: changed live by its hypervisor`
      : `no running VM has volume ${v.name} open: changed with qemu-img`;
  }

  /** A snapshot made or dropped live: the VM's own checks, and what its backend would get. */
  function planLive(
    b: PlanBuilder,
    vm: string,
    v: VolumeRecord,
    action: 'create' | 'delete',
    name: string,
  ): void {
    b.step(`${action === 'create' ? 'take' : 'delete'} snapshot live in VM ${vm}`, 'update row');
    for (const c of d.vms!.planDiskSnapshot(vm, action, files.nameOf(v.id, v.format), name))
      b.command(c);
  }

  const plan = (method: string, admitted: string[]): PlanBuilder => {
    const b = createPlan(method, d.dataDir);
    for (const a of admitted) b.admit(a);
    return b;
  };

  return {
    /** Take snapshot `name` now: live when a running VM has the volume, else with qemu-img. */
    snapshot(p: ParamsOf<'volume.snapshot'>): Promise<VolumeSnapshot> {
      return locked(p.volume, async (v, file, admitted) => {
        const { vm } = await checkSnapshot(v, file, p.name, admitted);
        if (vm !== null)
          await d.vms!.diskSnapshot(vm, 'create', files.nameOf(v.id, v.format), p.name);
        else await qemuImg.snapshot(file, 'create', p.name);
        const after = await qemuImg.info(file, 'qcow2');
        const made = after.snapshots.find((s) => s.name === p.name);
        if (!made)
          throw new MvirtError(
            'INTERNAL',
            `snapshot ${p.name} is not in ${v.name}'s file after it was taken`,
          );
        transitions.change(v.id, {
          what: `snapshot ${p.name} taken${vm !== null ? ` live in VM ${vm}` : ''}`,
          objects: vm !== null ? [vm] : [],
          data: { snapshot: p.name, live: vm !== null },
          write: () => repo.setUsed(v.id, after.actualSize),
        });
        return toRecord(made);
      });
    },

    /** The volume's snapshots, oldest first (none for a raw volume). */
    snapshots(ref: string): Promise<VolumeSnapshot[]> {
      return d.serial(async () => {
        const v = d.find(ref);
        if (v.format !== 'qcow2') return [];
        return (await snapshotsOf(await files.checkFile(v.id, v.format))).map(toRecord);
      });
    },

    /** The volume's data as it was at the snapshot; only while no VM runs with it. */
    restore(p: ParamsOf<'volume.restore'>): Promise<VolumeRecord> {
      return locked(p.volume, async (v, file, admitted) => {
        await checkRestore(v, file, p.snapshot, admitted);
        await qemuImg.snapshot(file, 'apply', p.snapshot);
        // A snapshot taken before a resize brings its own size back.
        const after = await qemuImg.info(file, 'qcow2');
        return transitions.change(v.id, {
          what: `restored to snapshot ${p.snapshot}`,
          data: { snapshot: p.snapshot, sizeBytes: after.virtualSize },
          write: () => repo.setSize(v.id, after.virtualSize, after.actualSize, now()),
        });
      });
    },

    /** Drop a snapshot (live when a running VM has the volume); its clusters are freed. */
    deleteSnapshot(p: ParamsOf<'volume.deleteSnapshot'>): Promise<Record<string, never>> {
      return locked(p.volume, async (v, file, admitted) => {
        const { vm } = await checkDeleteSnapshot(v, file, p.snapshot, admitted);
        if (vm !== null)
          await d.vms!.diskSnapshot(vm, 'delete', files.nameOf(v.id, v.format), p.snapshot);
        else await qemuImg.snapshot(file, 'delete', p.snapshot);
        const after = await qemuImg.info(file, 'qcow2');
        transitions.change(v.id, {
          what: `snapshot ${p.snapshot} deleted${vm !== null ? ` live in VM ${vm}` : ''}`,
          objects: vm !== null ? [vm] : [],
          data: { snapshot: p.snapshot, live: vm !== null },
          write: () => repo.setUsed(v.id, after.actualSize),
        });
        return {};
      });
    },

    /**
     * Dry runs, in the same queue and under the same VM locks; a live change
     * makes the VM's own checks too (host/vm/disk-access.ts).
     */
    plan: {
      snapshot: (p: ParamsOf<'volume.snapshot'>): Promise<DryRunPlan> =>
        locked(p.volume, async (v, file, admitted) => {
          const { vm } = await checkSnapshot(v, file, p.name, admitted);
          const b = plan('volume.snapshot', admitted);
          if (vm !== null) planLive(b, vm, v, 'create', p.name);
          else
            b.step('take snapshot', 'update row').exec(
              qemuImg.argv.snapshot(file, 'create', p.name),
            );
          return b
            .change(
              `volume ${v.name}: snapshot ${p.name} taken${vm !== null ? ` live in VM ${vm}` : ''}`,
            )
            .done();
        }),

      restore: (p: ParamsOf<'volume.restore'>): Promise<DryRunPlan> =>
        locked(p.volume, async (v, file, admitted) => {
          await checkRestore(v, file, p.snapshot, admitted);
          return plan('volume.restore', admitted)
            .step('apply snapshot', 'update row')
            .exec(qemuImg.argv.snapshot(file, 'apply', p.snapshot))
            .change(`volume ${v.name}: restored to snapshot ${p.snapshot}`)
            .done();
        }),

      deleteSnapshot: (p: ParamsOf<'volume.deleteSnapshot'>): Promise<DryRunPlan> =>
        locked(p.volume, async (v, file, admitted) => {
          const { vm } = await checkDeleteSnapshot(v, file, p.snapshot, admitted);
          const b = plan('volume.deleteSnapshot', admitted);
          if (vm !== null) planLive(b, vm, v, 'delete', p.snapshot);
          else
            b.step('delete snapshot', 'update row').exec(
              qemuImg.argv.snapshot(file, 'delete', p.snapshot),
            );
          return b
            .change(
              `volume ${v.name}: snapshot ${p.snapshot} deleted${vm !== null ? ` live in VM ${vm}` : ''}`,
            )
            .done();
        }),
    },
  };
}

export type VolumeSnapshots = ReturnType<typeof createVolumeSnapshots>;
