/**
 * Saving a running VM's memory and device state: for a snapshot (the VM goes
 * on) and for vm.suspend (its process ends, the state stays in its folder and
 * the next start resumes from it). The VM is `paused` while the hypervisor
 * writes the state, so that a crash of mvirtd meanwhile leaves it paused and
 * resumable, never marked up while it is not. A snapshot copies the VM's
 * volumes inside that pause (save-disks.ts).
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import { isSavableVm, isUpVm } from '../../protocol/states.js';
import type { SavedState, StateSpec } from '../hypervisors/types.js';
import { hashFiles, type ManifestDisk } from '../snapshots/files.js';
import { capable } from './admit.js';
import type { VmContext } from './context.js';
import { exitsWithin, type Live } from './live.js';
import { copyDisks, disksToSave, type DiskToSave, type SavedDisk } from './save-disks.js';

/** A suspended VM's saved state: a folder in the VM's folder. */
export const SUSPEND_DIR = 'suspend';
/** What the VM's last launch gave the hypervisor that a saved state depends on (boot.ts writes it). */
export const STATE_SPEC_FILE = 'state-spec.json';

export interface SavedVm {
  saved: SavedState;
  /** sha256 of each file of the state, by name. */
  hashes: Record<string, string>;
  /** The VM's volume disks in order, as the manifest records them (each copy with its sha256). */
  disks: ManifestDisk[];
  /** The VM as it was when saved (its identity generation is in the store). */
  vm: VmRecord;
  /** How long the VM was paused; diskMs of it went to copying its volumes. */
  ms: number;
  diskMs: number;
}

/** Written at every launch: a re-attached VM (after a daemon restart) can still be saved. */
export const writeStateSpec = (dir: string, spec: StateSpec): Promise<void> =>
  writeFile(
    path.join(dir, STATE_SPEC_FILE),
    JSON.stringify({
      memoryMiB: spec.memoryMiB,
      vcpus: spec.vcpus,
      disks: spec.disks,
      network: spec.network,
      channel: spec.channel,
    }),
    { mode: 0o600 },
  );

/** VM_BAD_STATE unless the VM's state can be saved now, CAPABILITY_UNSUPPORTED unless its backend can. */
export function savableLive(ctx: VmContext, vm: VmRecord, what: string): Live {
  capable(ctx, vm, 'snapshots');
  // A snapshot's only use is new VMs (vm.create fromSnapshot): forks.
  if (what === 'snapshot') capable(ctx, vm, 'forks');
  const live = ctx.liveOf(vm.id);
  if (!live || !isSavableVm(vm.state))
    throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is ${vm.state}; cannot ${what} it`, {
      details: { state: vm.state },
    });
  return live;
}

/**
 * The checks of a save and its dry run: savableLive, then the launch spec
 * the state will depend on and the VM's disks as they are to be saved
 * (VM_BAD_STATE when they changed since the launch: save-disks.ts).
 */
export async function savable(
  ctx: VmContext,
  vm: VmRecord,
  what: string,
): Promise<{ live: Live; spec: StateSpec; disks: DiskToSave[] }> {
  const live = savableLive(ctx, vm, what);
  const spec = JSON.parse(
    await readFile(path.join(live.dir, STATE_SPEC_FILE), 'utf8'),
  ) as StateSpec;
  return { live, spec, disks: await disksToSave(ctx, vm, spec, what) };
}

export function savePart(ctx: VmContext) {
  /**
   * Pause (if up) and save into the folder `target`. The VM is left paused;
   * the caller resumes it or ends it. Under the VM's lock.
   */
  async function saveInto(id: string, target: string, what: 'snapshot' | 'suspend') {
    const cur = ctx.find(id);
    const { live, spec, disks } = await savable(ctx, cur, what);
    const started = performance.now();
    if (isUpVm(cur.state)) {
      await live.running!.pause();
      live.pausedFrom = cur.state;
      ctx.transition(id, 'paused', `saving its state (${what})`);
    }
    try {
      const saved = await live.running!.saveState!(target, spec);
      // Still paused: the volumes as they are at this instant (save-disks.ts).
      const copied = what === 'snapshot' ? await copyDisks(disks, target) : { disks: [], ms: 0 };
      const pausedMs = Math.round(performance.now() - started);
      return { saved, vm: cur, disks: copied.disks, diskMs: copied.ms, pausedMs };
    } catch (err) {
      await resumeIfWas(id, live, cur.state).catch((e: unknown) =>
        live.log.warn({ err: e }, 'cannot resume the VM after a failed save'),
      );
      throw err;
    }
  }

  /** Back to the state the VM was in before saveInto paused it. */
  async function resumeIfWas(id: string, live: Live, was: VmState): Promise<void> {
    if (!isUpVm(was) || ctx.find(id).state !== 'paused') return;
    await live.running!.resume();
    const to = live.pausedFrom ?? was;
    live.pausedFrom = undefined;
    ctx.transition(id, to, 'state saved');
  }

  /**
   * vm.snapshot's part: save into the folder `target` and let the VM go on as
   * it was; the files are hashed after it goes on (they no longer change).
   * `keep` records, still under the VM's lock (no disk can be detached or
   * deleted meanwhile), the volumes the snapshot keeps as they are.
   */
  async function saveForSnapshot(
    id: string,
    target: string,
    keep?: (disks: readonly SavedDisk[]) => void,
  ): Promise<SavedVm> {
    const r = await ctx.withLock(id, async () => {
      const r = await saveInto(id, target, 'snapshot');
      await resumeIfWas(id, ctx.liveOf(id)!, r.vm.state);
      keep?.(r.disks);
      return r;
    });
    const copies = r.disks.flatMap((d) => (d.kept === 'copy' ? [d.file] : []));
    const [hashes, diskHashes] = await Promise.all([
      hashFiles(target, r.saved),
      hashFiles(target, copies),
    ]);
    const disks = r.disks.map((d): ManifestDisk =>
      d.kept === 'copy' ? { ...d, sha256: diskHashes[d.file]! } : d,
    );
    return { saved: r.saved, vm: r.vm, ms: r.pausedMs, diskMs: r.diskMs, hashes, disks };
  }

  /** vm.suspend: save into the VM's folder, record it, end the process. */
  async function suspend(ref: string): Promise<VmRecord> {
    const { id } = ctx.find(ref);
    return ctx.withLock(id, async () => {
      await savable(ctx, ctx.find(id), 'suspend'); // before anything is made
      const target = path.join(ctx.dirOf(id), SUSPEND_DIR);
      // A leftover of a suspend that did not finish goes first.
      await rm(target, { recursive: true, force: true });
      await mkdir(target, { mode: 0o700 });
      const r = await saveInto(id, target, 'suspend').catch(async (err: unknown) => {
        await rm(target, { recursive: true, force: true });
        throw err;
      });
      const live = ctx.liveOf(id)!;
      live.exitIntent = { to: 'suspended', reason: `${r.saved.bytes} bytes saved` };
      await (live.running!.quit?.() ?? Promise.resolve(live.running!.signal('SIGKILL')));
      if (!(await exitsWithin(live.running!, ctx.options.killTimeoutMs))) {
        live.running!.signal('SIGKILL');
        await exitsWithin(live.running!, ctx.options.killTimeoutMs);
      }
      // Hashed once the process is gone (nothing writes them any more), before anything resumes them.
      const hashes = await hashFiles(target, r.saved);
      ctx.vms.setPendingRestore(id, { from: 'suspend', saved: r.saved, hashes }, ctx.now());
      ctx.audit(`${r.vm.name}: suspended`, [id], { bytes: r.saved.bytes, ms: r.pausedMs });
      return ctx.find(id);
    });
  }

  return { saveForSnapshot, suspend };
}

export type SavePart = ReturnType<typeof savePart>;
