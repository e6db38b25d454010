/**
 * Volumes (`volume.create|get|list|resize|delete|clone`): raw or qcow2 files
 * made with qemu-img under `<data-dir>/volumes/`, one SQLite row each. Making
 * one is named steps with rollback (vm/steps.ts): the file first, then the
 * row, so a failure leaves neither. Changes run one at a time (one queue for
 * all volumes): a capacity check then sees every earlier change's result, and
 * two creates cannot both take the last free gigabyte.
 *
 * Each change is split in two: a check part that makes every check and
 * resolves what it would act on (ids, files, formats, sizes, the qemu-img
 * call), and the part that acts. A dry run (`plan.*`, protocol/plan.ts) runs
 * the same check part in the same queue and describes the result instead, so
 * a plan and the real call cannot disagree about what is refused.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import pLimit from 'p-limit';
import type { MvirtLogger } from '../log.js';
import { createPlan } from '../plan.js';
import type { Store } from '../store/index.js';
import { MvirtError } from '../../protocol/errors.js';
import type { DryRunPlan } from '../../protocol/plan.js';
import type { ParamsOf, VolumeFormat, VolumeRecord } from '../../protocol/rpc.js';
import { runSteps, StepError, type Step } from '../vm/steps.js';
import { createCapacity, type CapacityOptions } from './capacity.js';
import { volumeCopies, type CopyIn, type Maker, type MakePrep } from './copies.js';
import { writeQcow2Overlay } from './qcow2-overlay.js';
import type { VolumeFiles } from './files.js';
import { keptBySnapshot, requireUnkept } from './kept.js';
import type { QemuImg } from './qemu-img.js';
import { createVolumeSnapshots, type VolumeVms } from './snapshots.js';
import type { VolumeTransitions } from './transition.js';

export const MIB = 1024 * 1024;

export interface VolumeManagerDeps {
  store: Store;
  files: VolumeFiles;
  qemuImg: QemuImg;
  transitions: VolumeTransitions;
  /** Is this VM up (its hypervisor may have the file open)? */
  vmActive(vmId: string): boolean;
  /** The VMs' locks and live disk snapshots (snapshots.ts); without it no VM runs. */
  vms?: VolumeVms;
  log: MvirtLogger;
  /** Plans show paths relative to it; default: the volumes folder's parent (mvirtd's data dir). */
  dataDir?: string;
  options: CapacityOptions & {
    /** --volume-import-dir: the only place volume.import reads from; null: no imports. */
    importDir: string | null;
  };
}

interface MakeCtx extends MakePrep {
  id: string;
  file?: string;
  rec?: VolumeRecord;
}

const mib = (bytes: number): string => `${bytes / MIB} MiB`;

export function createVolumeManager(d: VolumeManagerDeps) {
  const { store, files, qemuImg, transitions } = d;
  const repo = store.volumes;
  const log = d.log.child({ component: 'volume' });
  const capacity = createCapacity(files, repo, d.options);
  /** One change at a time, in arrival order. */
  const queue = pLimit(1);
  const serial = <T>(fn: () => Promise<T>): Promise<T> => queue(fn);
  const now = (): string => new Date().toISOString();

  const dataDir = d.dataDir ?? path.dirname(files.dir);

  function find(ref: string): VolumeRecord {
    const v = repo.find(ref);
    if (!v) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id or name ${ref}`);
    return v;
  }

  function nameFree(name: string): string {
    if (repo.nameTaken(name))
      throw new MvirtError('VOLUME_EXISTS', `a volume named ${name} already exists`);
    return `name ${name} is free`;
  }

  const newId = (): string => `vol-${randomBytes(6).toString('hex')}`;

  const MAKE_STEPS: Step<MakeCtx>[] = [
    {
      name: 'make file',
      run: async (c) => {
        c.file = await files.checkAbsent(c.id, c.format);
        await c.make(c.file).run();
      },
      // Only what this step made: checkAbsent refused anything already there.
      undo: (c) => (c.file ? rm(c.file, { force: true }) : undefined),
    },
    {
      name: 'insert row',
      run: async (c) => {
        // Its virtual size is the one asked for (or its source's): only the
        // blocks it takes are read back (stat, not a qemu-img info spawn).
        const info = { virtualSize: c.sizeBytes, actualSize: await files.allocatedBytes(c.file!) };
        c.rec = transitions.change(c.id, {
          what: c.mode ? `${c.verb} (${c.mode})` : c.verb,
          objects: c.backing ? [c.backing.id] : [],
          data: { ...c.data, format: c.format, sizeBytes: info.virtualSize },
          write: () =>
            repo.insert(
              {
                id: c.id,
                name: c.name,
                format: c.format,
                sizeBytes: info.virtualSize,
                usedBytes: info.actualSize,
                backing: c.backing?.id ?? null,
              },
              now(),
            ),
        });
      },
    },
  ];

  async function make(prep: MakePrep): Promise<VolumeRecord> {
    const c: MakeCtx = { ...prep, id: newId() };
    try {
      await runSteps(MAKE_STEPS, c, log.child({ volume: c.id }));
    } catch (err) {
      const inner = err instanceof StepError ? err.error : err;
      if (String(inner).includes('UNIQUE'))
        throw new MvirtError('VOLUME_EXISTS', `a volume named ${c.name} already exists`);
      throw inner;
    }
    return c.rec!;
  }

  /** Whether anything holds the volume: which VMs, which clones. */
  function holders(v: VolumeRecord): { vms: string[]; clones: string[] } {
    return { vms: v.attachedTo.map((a) => a.vm), clones: repo.clonesOf(v.id) };
  }

  const { plan: snapshotPlans, ...snapshotOps } = createVolumeSnapshots({
    store,
    dataDir,
    files,
    qemuImg,
    transitions,
    capacity,
    ...(d.vms ? { vms: d.vms } : {}),
    serial,
    find,
  });

  const copies = volumeCopies({ nameFree, find, capacity });

  const makers = {
    create:
      (format: VolumeFormat, sizeBytes: number): Maker =>
      (file) => ({
        argv: qemuImg.argv.create(file, format, sizeBytes),
        run: () => qemuImg.create(file, format, sizeBytes),
      }),
    // qemu-img's own bytes, written in-process (qcow2-overlay.ts says why).
    overlay:
      (backingName: string, backingFormat: VolumeFormat, sizeBytes: number): Maker =>
      (file) => ({
        run: () => writeQcow2Overlay(file, { sizeBytes, backingName, backingFormat }),
      }),
    convert:
      (from: string, format: VolumeFormat, fromFormat: string): Maker =>
      (file) => ({
        argv: qemuImg.argv.convert(from, file, format, fromFormat),
        run: () => qemuImg.convert(from, file, format, fromFormat),
      }),
  };

  /** volume.create's checks; nothing written (qemu-img info and statfs only read). */
  async function checkCreate(p: ParamsOf<'volume.create'>): Promise<MakePrep> {
    const admitted = [nameFree(p.name)];
    const format = p.format ?? 'raw';
    if (p.importFrom !== undefined) {
      const src = await files.importSource(d.options.importDir, p.importFrom);
      // Probe the source's format once, then name it: a raw file that
      // looks like qcow2 with a backing file would otherwise make qemu-img
      // read whatever host file that header names.
      const info = await qemuImg.info(src);
      if (info.format !== 'raw' && info.format !== 'qcow2')
        throw new MvirtError(
          'IMPORT_REFUSED',
          `${p.importFrom} is ${info.format}, not raw or qcow2`,
        );
      if (info.backingFilename !== null)
        throw new MvirtError(
          'IMPORT_REFUSED',
          `${p.importFrom} has a backing file; import only self-contained images`,
        );
      admitted.push(
        `import ${p.importFrom}: a regular file in the import folder, ${info.format}, no backing file`,
        await capacity.require(info.virtualSize),
      );
      return {
        admitted,
        name: p.name,
        format,
        backing: null,
        sizeBytes: info.virtualSize,
        make: makers.convert(src, format, info.format),
        verb: `imported from ${p.importFrom}`,
        data: { importFrom: p.importFrom },
      };
    }
    const sizeBytes = p.sizeMiB! * MIB;
    admitted.push(await capacity.require(sizeBytes));
    return {
      admitted,
      name: p.name,
      format,
      backing: null,
      sizeBytes,
      make: makers.create(format, sizeBytes),
      verb: 'created',
      data: {},
    };
  }

  async function checkClone(p: ParamsOf<'volume.clone'>): Promise<MakePrep> {
    const src = find(p.volume);
    const admitted = [nameFree(p.name)];
    // A template written to under its overlays would change what they read;
    // a full copy of a disk being written would be torn.
    const writer = src.attachedTo.find((a) => !a.readOnly);
    if (writer)
      throw new MvirtError(
        'VOLUME_IN_USE',
        `volume ${src.name} is attached read-write to VM ${writer.vm}; clone it once detached or attached read-only`,
        { details: { vms: [writer.vm] } },
      );
    const srcFile = await files.checkFile(src.id, src.format);
    admitted.push(
      `volume ${src.name} is not attached read-write`,
      `volume ${src.name}'s file is a regular file in the volumes folder`,
    );
    const mode = p.mode ?? 'overlay';
    // An overlay may grow to its full virtual size: counted in full.
    admitted.push(await capacity.require(src.sizeBytes));
    return {
      admitted,
      name: p.name,
      format: mode === 'overlay' ? 'qcow2' : src.format,
      backing: mode === 'overlay' ? src : null,
      sizeBytes: src.sizeBytes,
      make:
        mode === 'overlay'
          ? // Relative to the overlay's folder: the pair stays valid if the data folder moves.
            makers.overlay(files.nameOf(src.id, src.format), src.format, src.sizeBytes)
          : makers.convert(srcFile, src.format, src.format),
      verb: `cloned from ${src.name}`,
      mode,
      data: { from: src.id, mode },
    };
  }

  /** file null: the volume has that size already, nothing to do. */
  async function checkResize(
    ref: string,
    sizeMiB: number,
  ): Promise<{ admitted: string[]; v: VolumeRecord; sizeBytes: number; file: string | null }> {
    const v = find(ref);
    const sizeBytes = sizeMiB * MIB;
    if (sizeBytes < v.sizeBytes)
      throw new MvirtError(
        'INVALID_PARAMS',
        `volume ${v.name} is ${v.sizeBytes / MIB} MiB; volumes only grow (asked ${sizeMiB} MiB)`,
        { details: { sizeBytes: v.sizeBytes } },
      );
    const up = v.attachedTo.filter((a) => d.vmActive(a.vm)).map((a) => a.vm);
    if (up.length > 0)
      throw new MvirtError(
        'VOLUME_IN_USE',
        `volume ${v.name} is attached to running VM ${up.join(', ')}; resize it while the VM is stopped (the guest sees the new size at its next boot)`,
        { details: { vms: up } },
      );
    const admitted = [
      `${mib(sizeBytes)} is not smaller than volume ${v.name}'s ${mib(v.sizeBytes)}`,
      `volume ${v.name} is not attached to a running VM`,
      requireUnkept(store, v, 'resize it'),
    ];
    if (sizeBytes === v.sizeBytes) return { admitted, v, sizeBytes, file: null };
    const file = await files.checkFile(v.id, v.format);
    admitted.push(
      `volume ${v.name}'s file is a regular file in the volumes folder`,
      await capacity.require(sizeBytes - v.sizeBytes),
    );
    return { admitted, v, sizeBytes, file };
  }

  async function checkDelete(
    ref: string,
  ): Promise<{ admitted: string[]; v: VolumeRecord; file: string }> {
    const v = find(ref);
    const h = holders(v);
    if (h.vms.length > 0 || h.clones.length > 0)
      throw new MvirtError(
        'VOLUME_IN_USE',
        h.vms.length > 0
          ? `volume ${v.name} is attached to VM ${h.vms.join(', ')}; delete the VM (or its disk) first`
          : `volume ${v.name} is the template of clone ${h.clones.join(', ')}; delete those first`,
        { details: h },
      );
    const kept = keptBySnapshot(store, v, 'delete it');
    if (kept) throw kept;
    // A link or a stranger in its place: refuse and keep the row, so the
    // admin sees what is wrong instead of a volume that silently vanished.
    const file = await files.checkFile(v.id, v.format);
    const admitted = [
      `volume ${v.name} is attached to no VM, is no clone's template and no snapshot keeps it`,
      `volume ${v.name}'s file is a regular file in the volumes folder`,
    ];
    return { admitted, v, file };
  }

  const plan = (method: string, admitted: string[]) => {
    const b = createPlan(method, dataDir);
    for (const a of admitted) b.admit(a);
    return b;
  };

  /**
   * A make's plan. The new volume's id is drawn only by the real call, so the
   * file is shown as a pattern: volumes/vol-<new>.<format>.
   */
  function planMake(method: string, prep: MakePrep): DryRunPlan {
    const file = path.join(files.dir, `vol-<new>.${prep.format}`);
    const what = [prep.mode, prep.format, mib(prep.sizeBytes)].filter(Boolean).join(', ');
    const b = plan(method, prep.admitted).step(...MAKE_STEPS.map((s) => s.name));
    const argv = prep.make(file).argv;
    if (argv) b.exec(argv);
    return b.create(file).change(`volume ${prep.name}: ${prep.verb} (${what})`).done();
  }

  return {
    capacity,
    ...snapshotOps,

    create(p: ParamsOf<'volume.create'>): Promise<VolumeRecord> {
      return serial(async () => make(await checkCreate(p)));
    },

    clone(p: ParamsOf<'volume.clone'>): Promise<VolumeRecord> {
      return serial(async () => make(await checkClone(p)));
    },

    /** A fork's disk: a new volume copied from a disk a VM snapshot saved (copies.ts). */
    copyIn(p: CopyIn): Promise<VolumeRecord> {
      return serial(async () => make(await copies.check(p)));
    },

    get(ref: string): Promise<VolumeRecord> {
      return serial(async () => {
        const v = find(ref);
        // Actual usage is measured now, not remembered.
        const info = await qemuImg.info(await files.checkFile(v.id, v.format), v.format);
        repo.setUsed(v.id, info.actualSize);
        return repo.get(v.id) ?? v;
      });
    },

    list(): VolumeRecord[] {
      return repo.list();
    },

    resize(ref: string, sizeMiB: number): Promise<VolumeRecord> {
      return serial(async () => {
        const { v, sizeBytes, file } = await checkResize(ref, sizeMiB);
        if (file === null) return v;
        await qemuImg.resize(file, v.format, sizeBytes);
        const info = await qemuImg.info(file, v.format);
        return transitions.change(v.id, {
          what: `resized to ${sizeMiB} MiB`,
          data: { from: v.sizeBytes, to: info.virtualSize },
          write: () => repo.setSize(v.id, info.virtualSize, info.actualSize, now()),
        });
      });
    },

    delete(ref: string): Promise<Record<string, never>> {
      return serial(async () => {
        const { v, file } = await checkDelete(ref);
        // The row goes first, in one synchronous block with the check that no
        // VM took the volume meanwhile (vm.create attaches synchronously too).
        transitions.remove(v.id, v.name, () => {
          const cur = repo.get(v.id);
          if (cur && cur.attachedTo.length > 0)
            throw new MvirtError('VOLUME_IN_USE', `volume ${v.name} was attached meanwhile`);
          repo.delete(v.id);
        });
        await rm(file, { force: true }).catch((err: unknown) =>
          log.error({ err, volume: v.id }, 'volume row deleted but its file could not be removed'),
        );
        return {};
      });
    },

    /**
     * Dry runs: the same checks in the same queue (so a plan sees every
     * earlier change), a plan, nothing written. Only the qemu-img calls that
     * write are listed; its read-only `info` probes ran during the checks.
     */
    plan: {
      create: (p: ParamsOf<'volume.create'>): Promise<DryRunPlan> =>
        serial(async () => planMake('volume.create', await checkCreate(p))),

      clone: (p: ParamsOf<'volume.clone'>): Promise<DryRunPlan> =>
        serial(async () => planMake('volume.clone', await checkClone(p))),

      /** Copies made one after another (forks): their checks and cp commands, each new file shown as volumes/vol-<new>.<format>. */
      copies: (list: readonly CopyIn[]) =>
        serial(() => copies.checkAll(list, (p) => path.join(files.dir, `vol-<new>.${p.format}`))),

      resize: (ref: string, sizeMiB: number): Promise<DryRunPlan> =>
        serial(async () => {
          const { admitted, v, sizeBytes, file } = await checkResize(ref, sizeMiB);
          const b = plan('volume.resize', admitted);
          // Same size: the real call answers with the volume and changes nothing.
          if (file === null) return b.done();
          return b
            .step('resize file', 'update row')
            .exec(qemuImg.argv.resize(file, v.format, sizeBytes))
            .change(`volume ${v.name}: resized ${v.sizeBytes / MIB} → ${sizeMiB} MiB`)
            .done();
        }),

      delete: (ref: string): Promise<DryRunPlan> =>
        serial(async () => {
          const { admitted, v, file } = await checkDelete(ref);
          return plan('volume.delete', admitted)
            .step('delete row', 'remove file')
            .remove(file)
            .change(`volume ${v.name}: deleted`)
            .done();
        }),

      ...snapshotPlans,
    },
  };
}

export type VolumeManager = ReturnType<typeof createVolumeManager>;
