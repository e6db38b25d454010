/**
 * Volumes (`volume.create|get|list|resize|delete|clone`): raw or qcow2 files
 * made with qemu-img under `<data-dir>/volumes/`, one SQLite row each. Making
 * one is named steps with rollback (vm/steps.ts): the file first, then the
 * row, so a failure leaves neither. Changes run one at a time (one queue for
 * all volumes): a capacity check then sees every earlier change's result, and
 * two creates cannot both take the last free gigabyte.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import pLimit from 'p-limit';
import type { MvirtLogger } from '../log.js';
import type { Store } from '../store/index.js';
import { MvirtError } from '../../protocol/errors.js';
import type { ParamsOf, VolumeFormat, VolumeRecord } from '../../protocol/rpc.js';
import { runSteps, StepError, type Step } from '../vm/steps.js';
import { createCapacity, type CapacityOptions } from './capacity.js';
import type { VolumeFiles } from './files.js';
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
  options: CapacityOptions & {
    /** --volume-import-dir: the only place volume.import reads from; null: no imports. */
    importDir: string | null;
  };
}

interface MakeCtx {
  id: string;
  name: string;
  format: VolumeFormat;
  backing: VolumeRecord | null;
  /** Builds the file at `file`. */
  make: (file: string) => Promise<void>;
  what: string;
  data: Record<string, unknown>;
  file?: string;
  rec?: VolumeRecord;
}

export function createVolumeManager(d: VolumeManagerDeps) {
  const { store, files, qemuImg, transitions } = d;
  const repo = store.volumes;
  const log = d.log.child({ component: 'volume' });
  const capacity = createCapacity(files, repo, d.options);
  /** One change at a time, in arrival order. */
  const queue = pLimit(1);
  const serial = <T>(fn: () => Promise<T>): Promise<T> => queue(fn);
  const now = (): string => new Date().toISOString();

  function find(ref: string): VolumeRecord {
    const v = repo.find(ref);
    if (!v) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id or name ${ref}`);
    return v;
  }

  function nameFree(name: string): void {
    if (repo.nameTaken(name))
      throw new MvirtError('VOLUME_EXISTS', `a volume named ${name} already exists`);
  }

  const newId = (): string => `vol-${randomBytes(6).toString('hex')}`;

  const MAKE_STEPS: Step<MakeCtx>[] = [
    {
      name: 'make file',
      run: async (c) => {
        c.file = await files.checkAbsent(c.id, c.format);
        await c.make(c.file);
      },
      // Only what this step made: checkAbsent refused anything already there.
      undo: (c) => (c.file ? rm(c.file, { force: true }) : undefined),
    },
    {
      name: 'insert row',
      run: async (c) => {
        const info = await qemuImg.info(c.file!, c.format);
        c.rec = transitions.change(c.id, {
          what: c.what,
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

  async function make(c: MakeCtx): Promise<VolumeRecord> {
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

  const snapshots = createVolumeSnapshots({
    store,
    files,
    qemuImg,
    transitions,
    capacity,
    ...(d.vms ? { vms: d.vms } : {}),
    serial,
    find,
  });

  return {
    capacity,
    ...snapshots,

    create(p: ParamsOf<'volume.create'>): Promise<VolumeRecord> {
      return serial(async () => {
        nameFree(p.name);
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
          await capacity.require(info.virtualSize);
          return make({
            id: newId(),
            name: p.name,
            format,
            backing: null,
            make: (file) => qemuImg.convert(src, file, format, info.format),
            what: `imported from ${p.importFrom}`,
            data: { importFrom: p.importFrom },
          });
        }
        const sizeBytes = p.sizeMiB! * MIB;
        await capacity.require(sizeBytes);
        return make({
          id: newId(),
          name: p.name,
          format,
          backing: null,
          make: (file) => qemuImg.create(file, format, sizeBytes),
          what: 'created',
          data: {},
        });
      });
    },

    clone(p: ParamsOf<'volume.clone'>): Promise<VolumeRecord> {
      return serial(async () => {
        const src = find(p.volume);
        nameFree(p.name);
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
        const mode = p.mode ?? 'overlay';
        // An overlay may grow to its full virtual size: counted in full.
        await capacity.require(src.sizeBytes);
        return make({
          id: newId(),
          name: p.name,
          format: mode === 'overlay' ? 'qcow2' : src.format,
          backing: mode === 'overlay' ? src : null,
          make: (file) =>
            mode === 'overlay'
              ? // Relative to the overlay's folder: the pair stays valid if the data folder moves.
                qemuImg.overlay(file, files.nameOf(src.id, src.format), src.format)
              : qemuImg.convert(srcFile, file, src.format, src.format),
          what: `cloned from ${src.name} (${mode})`,
          data: { from: src.id, mode },
        });
      });
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
        if (sizeBytes === v.sizeBytes) return v;
        const file = await files.checkFile(v.id, v.format);
        await capacity.require(sizeBytes - v.sizeBytes);
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
        // A link or a stranger in its place: refuse and keep the row, so the
        // admin sees what is wrong instead of a volume that silently vanished.
        const file = await files.checkFile(v.id, v.format);
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
  };
}

export type VolumeManager = ReturnType<typeof createVolumeManager>;
