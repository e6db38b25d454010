/**
 * VM snapshots (vm.snapshot, snapshot.get|list|delete): a row in SQLite
 * (host/store/snapshots.ts) and a folder with the saved state, copies of
 * the VM's volumes and its manifest (files.ts). The VM manager saves the
 * state and copies the volumes (vm/save.ts, vm/save-disks.ts); forks resume
 * from it (vm/restore.ts) with volumes made from the copies (vm/fork-disks.ts).
 * The volumes it keeps as they are (shared read-only disks, templates of
 * copied overlays) are rows of snapshot_volumes, gone with the snapshot's. A snapshot is listed as usable only once
 * its manifest is on disk and its row says `ready`: a crash while saving
 * leaves a `saving` row that recover() removes with its folder.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { actorName, currentActing } from '../auth/actor.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import { createPlan } from '../plan.js';
import { copySparseArgv } from '../sparse-copy.js';
import type { Store, StoredSnapshot } from '../store/index.js';
import { publicSnapshot } from '../store/snapshots.js';
import type { ImageStore } from '../vm/images.js';
import { MvirtError } from '../../protocol/errors.js';
import type { DryRunPlan } from '../../protocol/plan.js';
import type { SnapshotRecord, VmRecord } from '../../protocol/rpc.js';
import { newSnapshotId, MANIFEST_FILE, publicDisks, type SnapshotFiles } from './files.js';
import type { SavedVm } from '../vm/save.js';
import { keptVolumes, type DiskToSave, type SavedDisk } from '../vm/save-disks.js';

export interface SnapshotManagerDeps {
  store: Store;
  files: SnapshotFiles;
  images: ImageStore;
  vms: {
    get(ref: string): VmRecord;
    /**
     * VM_BAD_STATE / CAPABILITY_UNSUPPORTED unless the VM's state can be
     * saved now; its volume disks as a snapshot keeps them.
     */
    checkSavable(ref: string): Promise<{ vm: VmRecord; disks: DiskToSave[] }>;
    /** Save into `dir`; `keep` is called under the VM's lock once its volumes are copied. */
    saveForSnapshot(
      id: string,
      dir: string,
      keep: (disks: readonly SavedDisk[]) => void,
    ): Promise<SavedVm>;
  };
  events: EventLog;
  log: MvirtLogger;
  dataDir: string;
}

export function createSnapshotManager(d: SnapshotManagerDeps) {
  const repo = d.store.snapshots;
  const log = d.log.child({ component: 'snapshot' });

  function find(ref: string): StoredSnapshot {
    const s = repo.find(ref);
    if (!s || s.state !== 'ready')
      throw new MvirtError('SNAPSHOT_NOT_FOUND', `no snapshot with id or name ${ref}`);
    return s;
  }

  /**
   * The forks that have not resumed from it yet (they need its files at their
   * first start). A fork suspended since resumes from its own state file.
   */
  const waitingForks = (id: string): VmRecord[] =>
    d.store.vms.list().filter((v) => {
      const pending = v.restoredFrom === id ? d.store.vms.restoreState(v.id)?.pending : undefined;
      return pending?.from === 'snapshot' && pending.snapshot === id;
    });

  async function takeChecks(vmRef: string, name: string) {
    const { vm, disks } = await d.vms.checkSavable(vmRef);
    if (repo.nameTaken(name))
      throw new MvirtError('SNAPSHOT_EXISTS', `a snapshot named ${name} already exists`);
    const image = await d.images.resolve(vm.image);
    return { vm, image, disks };
  }

  async function take(vmRef: string, name: string): Promise<SnapshotRecord> {
    const { vm, image } = await takeChecks(vmRef, name);
    const id = newSnapshotId();
    const generation = d.store.vms.restoreState(vm.id)?.generation ?? 0;
    const createdBy = actorName(currentActing().actor);
    try {
      repo.insert(
        {
          id,
          name,
          sourceVm: vm.id,
          sourceName: vm.name,
          image: image.name,
          imageKey: image.manifest.key,
          backend: vm.backend,
          vcpus: vm.vcpus,
          memoryMiB: vm.memoryMiB,
          network: vm.network,
          generation,
          createdBy,
        },
        new Date().toISOString(),
      );
    } catch (err) {
      if (String(err).includes('UNIQUE'))
        throw new MvirtError('SNAPSHOT_EXISTS', `a snapshot named ${name} already exists`);
      throw err;
    }
    try {
      await d.files.prepare(id);
      const r = await d.vms.saveForSnapshot(vm.id, d.files.dirOf(id), (disks) =>
        repo.keep(id, keptVolumes(disks)),
      );
      const row = repo.get(id)!;
      await d.files.writeManifest({
        format: 1,
        id,
        name,
        createdAt: row.createdAt,
        createdBy,
        source: { vm: vm.id, name: vm.name, generation },
        image: { name: image.name, key: image.manifest.key },
        network: vm.network,
        state: r.saved,
        files: Object.fromEntries(
          Object.entries(r.saved.files).map(([n, bytes]) => [n, { bytes, sha256: r.hashes[n]! }]),
        ),
        disks: r.disks,
      });
      repo.markReady(id, r.saved, JSON.stringify(r.hashes), publicDisks(r.disks));
      const rec = publicSnapshot(repo.get(id)!);
      const copies = r.disks.flatMap((x) => (x.kept === 'copy' ? [x] : []));
      const copied = copies.reduce((n, x) => n + x.bytes, 0);
      const disksSaid =
        copies.length > 0
          ? `, ${r.diskMs} ms of it copying ${copies.length} volume${copies.length === 1 ? '' : 's'} (${copied} bytes)`
          : '';
      d.events.append({
        level: 'audit',
        component: 'snapshot',
        message: `${vm.name}: snapshot ${name} taken (${r.saved.bytes} bytes; the VM paused ${r.ms} ms${disksSaid})`,
        objects: [id, vm.id, ...r.disks.map((x) => x.volume.id)],
        data: {
          pausedMs: r.ms,
          files: r.saved.files,
          ram: r.saved.ram,
          machine: r.saved.machine,
          ...(r.disks.length > 0 ? { diskMs: r.diskMs, disks: publicDisks(r.disks) } : {}),
        },
      });
      return rec;
    } catch (err) {
      await d.files.remove(id).catch(() => undefined);
      repo.delete(id);
      throw err;
    }
  }

  /** snapshot.delete's check, for the call and its dry run: no VM or pool still needs its files. */
  function deletable(ref: string): StoredSnapshot {
    const s = find(ref);
    const pools = d.store.pools.usingSnapshot(s.id);
    if (pools.length > 0)
      throw new MvirtError(
        'SNAPSHOT_IN_USE',
        `snapshot ${s.name} is what pool${pools.length === 1 ? '' : 's'} ${pools.join(', ')} ${pools.length === 1 ? 'makes its' : 'make their'} VMs from; give ${pools.length === 1 ? 'it' : 'each'} another (pool.set) or delete ${pools.length === 1 ? 'it' : 'them'} first`,
        { details: { pools } },
      );
    const forks = waitingForks(s.id);
    if (forks.length > 0)
      throw new MvirtError(
        'SNAPSHOT_IN_USE',
        `snapshot ${s.name} is the saved state of VMs that have not started yet: ${forks.map((v) => v.name).join(', ')}; start or delete them first`,
        { details: { vms: forks.map((v) => v.id) } },
      );
    return s;
  }

  /**
   * `force` (templates only): delete even while forks wait for it; they
   * then fail to start with SNAPSHOT_NOT_FOUND (ephemeral VMs, destroyed anyway).
   */
  async function remove(ref: string, o: { force?: boolean } = {}): Promise<Record<string, never>> {
    const s = o.force ? find(ref) : deletable(ref);
    // Recorded while its owner label still exists (scoped controllers see it), with its source VM.
    d.events.append({
      level: 'audit',
      component: 'snapshot',
      message: `snapshot ${s.name} deleted`,
      objects: [s.id, s.source.vm],
    });
    repo.delete(s.id);
    await d.files.remove(s.id);
    return {};
  }

  const plan = {
    async take(vmRef: string, name: string): Promise<DryRunPlan> {
      const b = createPlan('vm.snapshot', d.dataDir);
      const { vm, image, disks } = await takeChecks(vmRef, name);
      b.admit(`VM ${vm.name} is ${vm.state}: its state can be saved`)
        .admit(`name ${name} is free`)
        .admit(`image ${image.name} found`);
      if (disks.length > 0) b.admit(`its disks are those it was started with`);
      b.step('record the snapshot (saving)', 'pause the VM', 'save its memory and device state');
      const dir = path.join(d.files.root, '<new id>');
      const copies = disks.flatMap((x) => (x.kept === 'copy' ? [x] : []));
      if (copies.length > 0) b.step('copy its volumes (still paused)');
      b.step('resume the VM as it was', 'hash the state files', 'write the manifest');
      for (const x of copies) b.exec(copySparseArgv(x.source, path.join(dir, x.disk.file)));
      b.create(
        `${dir}/`,
        path.join(dir, '<state files>'),
        ...copies.map((x) => path.join(dir, x.disk.file)),
        path.join(dir, MANIFEST_FILE),
      );
      b.change(`snapshot ${name}: created from VM ${vm.name}`);
      for (const x of disks) {
        const v = x.disk.volume.name;
        if (x.kept === 'shared')
          b.change(`volume ${v}: kept as it is for the snapshot's forks (a read-only disk)`);
        else if (x.disk.template)
          b.change(
            `volume ${x.disk.template.name}: kept as it is (the template of volume ${v}'s copy)`,
          );
      }
      return b.done();
    },
    remove(ref: string): DryRunPlan {
      const b = createPlan('snapshot.delete', d.dataDir);
      const s = deletable(ref);
      b.admit(`no VM waits to resume from snapshot ${s.name}, and no pool forks it`);
      b.remove(`${d.files.dirOf(s.id)}/`);
      b.change(`snapshot ${s.name}: deleted`);
      return b.done();
    },
  };

  /**
   * After a restart: a `saving` row is a snapshot a crash interrupted (its
   * files may be partial): removed with its folder. A folder without a row
   * (a crash between the two) goes too.
   */
  async function recover(): Promise<void> {
    for (const id of repo.saving()) {
      log.warn({ snapshot: id }, 'removing a snapshot that was being saved when mvirtd stopped');
      await d.files.remove(id);
      repo.delete(id);
    }
    const known = new Set(repo.list().map((s) => s.id));
    const entries = await readdir(d.files.root).catch(() => [] as string[]);
    for (const name of entries) {
      if (known.has(name) || !/^snap-[0-9a-f]{12}$/.test(name)) continue;
      log.warn({ snapshot: name }, 'removing a snapshot folder with no record');
      await d.files.remove(name);
    }
  }

  return {
    take,
    get: (ref: string): SnapshotRecord => publicSnapshot(find(ref)),
    /** Ready snapshots; of one VM by its id or name (a deleted source VM by the name it had). */
    list: (vmRef?: string): SnapshotRecord[] => {
      const vm = vmRef === undefined ? undefined : d.store.vms.find(vmRef)?.id;
      const of = (s: StoredSnapshot) =>
        vmRef === undefined ||
        s.source.vm === (vm ?? vmRef) ||
        (vm === undefined && s.source.name === vmRef);
      return repo
        .list()
        .filter((s) => s.state === 'ready' && of(s))
        .map(publicSnapshot);
    },
    resolveId: (ref: string): string | undefined => repo.find(ref)?.id,
    delete: remove,
    plan,
    recover,
  };
}

export type SnapshotManager = ReturnType<typeof createSnapshotManager>;
