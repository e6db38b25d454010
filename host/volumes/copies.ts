/**
 * What a volume is made from (the Maker and MakePrep of manager.ts), and
 * the one kind made for VM snapshots: a fork's disk (vm.create
 * {fromSnapshot}), a new volume whose file is a sparse copy of a volume a VM
 * snapshot saved in its folder. A copy of a qcow2 overlay clone reads
 * through the same template as the overlay it was copied from: the new
 * volume is a clone of that template (the snapshot keeps it as it is).
 */
import { MvirtError } from '../../protocol/errors.js';
import type { PlanCommand } from '../../protocol/plan.js';
import type { VolumeFormat, VolumeRecord } from '../../protocol/rpc.js';
import { copySparseArgv, copySparseDurable } from '../sparse-copy.js';
import type { Capacity } from './capacity.js';

/**
 * What makes a new volume's file at `file`, spelled once: `argv` is the
 * command a plan shows (qemu-img.ts builds qemu-img's and the real call from
 * one function; none for an overlay, written in-process), `run` makes it.
 */
export type Maker = (file: string) => { argv?: string[]; run(): Promise<void> };

/** What a create, clone or copy resolved once every check passed. */
export interface MakePrep {
  /** The checks passed, in words (a plan's admission). */
  admitted: string[];
  name: string;
  format: VolumeFormat;
  backing: VolumeRecord | null;
  /** The new volume's virtual size. */
  sizeBytes: number;
  make: Maker;
  /** 'created', 'imported from x', 'cloned from x', 'copied from x'. */
  verb: string;
  mode?: 'overlay' | 'full';
  data: Record<string, unknown>;
}

/** A fork's disk: a new volume copied from a disk a VM snapshot saved. */
export interface CopyIn {
  name: string;
  /** The copy in the snapshot's folder (a path mvirtd derived, never a client's). */
  from: string;
  format: VolumeFormat;
  sizeBytes: number;
  /** The template the copy reads through (a copied overlay clone), or null. */
  backing: string | null;
  /** Where it comes from, in words: `snapshot warm's disk 0`. */
  what: string;
}

export interface CopyDeps {
  /** The words of the check, or VOLUME_EXISTS. */
  nameFree(name: string): string;
  find(ref: string): VolumeRecord;
  capacity: Pick<Capacity, 'require'>;
}

/** A copy: cp --sparse=always, flushed before the volume's row names the file. */
const copyMaker =
  (from: string): Maker =>
  (file) => ({ argv: copySparseArgv(from, file), run: () => copySparseDurable(from, file) });

export function volumeCopies(d: CopyDeps) {
  function template(p: CopyIn): VolumeRecord | null {
    if (p.backing === null) return null;
    const t = d.find(p.backing);
    if (t.id !== p.backing)
      throw new MvirtError('VOLUME_NOT_FOUND', `template volume ${p.backing} of ${p.what} is gone`);
    return t;
  }

  return {
    /** One copy's checks (name free, template there, room for it); nothing written. */
    async check(p: CopyIn): Promise<MakePrep> {
      const admitted = [d.nameFree(p.name)];
      const backing = template(p);
      if (backing) admitted.push(`template volume ${backing.name} of ${p.what} is there`);
      admitted.push(await d.capacity.require(p.sizeBytes));
      return {
        admitted,
        name: p.name,
        format: p.format,
        backing,
        sizeBytes: p.sizeBytes,
        make: copyMaker(p.from),
        verb: `copied from ${p.what}`,
        data: { from: p.what },
      };
    },

    /**
     * The checks of several copies made one after another (a dry run of
     * forks): every name free and distinct, every template there, and room
     * for all of them together. `fileOf(i)` is how the plan shows each new file.
     */
    async checkAll(
      list: readonly CopyIn[],
      fileOf: (p: CopyIn) => string,
    ): Promise<{ admitted: string[]; commands: PlanCommand[] }> {
      const admitted: string[] = [];
      const names = new Set<string>();
      for (const p of list) {
        if (names.has(p.name))
          throw new MvirtError('VOLUME_EXISTS', `two new volumes would be named ${p.name}`);
        names.add(p.name);
        admitted.push(d.nameFree(p.name));
        const t = template(p);
        if (t) admitted.push(`template volume ${t.name} of ${p.what} is there`);
      }
      const total = list.reduce((n, p) => n + p.sizeBytes, 0);
      if (list.length > 0) admitted.push(await d.capacity.require(total));
      const commands = list.map((p): PlanCommand => ({
        kind: 'exec',
        argv: copySparseArgv(p.from, fileOf(p)),
      }));
      return { admitted, commands };
    },
  };
}
