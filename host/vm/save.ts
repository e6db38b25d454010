/**
 * Saving a running VM's memory and device state: for a snapshot (the VM goes
 * on) and for vm.suspend (its process ends, the state stays in its folder and
 * the next start resumes from it). The VM is `paused` while the hypervisor
 * writes the state, so that a crash of mvirtd meanwhile leaves it paused and
 * resumable, never marked up while it is not.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import { isSavableVm, isUpVm } from '../../protocol/states.js';
import type { SavedState, StateSpec } from '../hypervisors/types.js';
import { hashFiles } from '../snapshots/files.js';
import { capable } from './admit.js';
import type { VmContext } from './context.js';
import { exitsWithin, type Live } from './live.js';

/** A suspended VM's saved state: a folder in the VM's folder. */
export const SUSPEND_DIR = 'suspend';
/** What the VM's last launch gave the hypervisor that a saved state depends on (boot.ts writes it). */
export const STATE_SPEC_FILE = 'state-spec.json';

export interface SavedVm {
  saved: SavedState;
  /** sha256 of each file of the state, by name. */
  hashes: Record<string, string>;
  /** The VM as it was when saved (its identity generation is in the store). */
  vm: VmRecord;
  ms: number;
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
  const live = ctx.liveOf(vm.id);
  if (!live || !isSavableVm(vm.state))
    throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is ${vm.state}; cannot ${what} it`, {
      details: { state: vm.state },
    });
  if (vm.disks?.length)
    throw new MvirtError(
      'CAPABILITY_UNSUPPORTED',
      `VM ${vm.name} has volumes: saving the state of a VM with volumes is not supported yet; detach them first`,
    );
  return live;
}

export function savePart(ctx: VmContext) {
  /**
   * Pause (if up) and save into the folder `target`. The VM is left paused;
   * the caller resumes it or ends it. Under the VM's lock.
   */
  async function saveInto(id: string, target: string, what: string) {
    const cur = ctx.find(id);
    const live = savableLive(ctx, cur, what);
    const spec = JSON.parse(
      await readFile(path.join(live.dir, STATE_SPEC_FILE), 'utf8'),
    ) as StateSpec;
    const started = performance.now();
    if (isUpVm(cur.state)) {
      await live.running!.pause();
      live.pausedFrom = cur.state;
      ctx.transition(id, 'paused', `saving its state (${what})`);
    }
    try {
      const saved = await live.running!.saveState!(target, spec);
      return { saved, vm: cur, pausedMs: Math.round(performance.now() - started) };
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
   */
  async function saveForSnapshot(id: string, target: string): Promise<SavedVm> {
    const r = await ctx.withLock(id, async () => {
      const r = await saveInto(id, target, 'snapshot');
      await resumeIfWas(id, ctx.liveOf(id)!, r.vm.state);
      return r;
    });
    return { saved: r.saved, vm: r.vm, ms: r.pausedMs, hashes: await hashFiles(target, r.saved) };
  }

  /** vm.suspend: save into the VM's folder, record it, end the process. */
  async function suspend(ref: string): Promise<VmRecord> {
    const { id } = ctx.find(ref);
    return ctx.withLock(id, async () => {
      savableLive(ctx, ctx.find(id), 'suspend'); // before anything is made
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
