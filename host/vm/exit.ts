/**
 * Exit handling: what the end of a hypervisor process means for its VM
 * (stopped, failed, or nothing when we caused it), and the clean-up of what
 * the process held (agent session, console, runtime row, sockets, network).
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { ExitInfo, RunningVm } from '../hypervisors/types.js';
import type { VmState } from '../../protocol/rpc.js';
import type { Level, VmContext } from './context.js';
import { clearTimers, type Live } from './live.js';
import { unlinkDisks } from './disks.js';
import { guestPanicked } from './panic.js';
import { canTransition } from './states.js';
import { isActiveVm } from '../../protocol/states.js';

export function exitPart(ctx: VmContext): Pick<VmContext, 'watchExit' | 'removeSockets'> {
  const { vms } = ctx;

  function watchExit(live: Live, running: RunningVm): void {
    const off = running.onEvent?.((e) => {
      if (e.type === 'panicked') guestPanicked(ctx, live, 'reported by the hypervisor');
    });
    running.exited.then(
      (info) => {
        off?.();
        onExit(live, info);
      },
      (err: unknown) => {
        off?.();
        onExit(live, { code: null, signal: null, reason: String(err) });
      },
    );
  }

  /** Runs synchronously on exit so that awaiting `exited` observes the new state. */
  function onExit(live: Live, info: ExitInfo): void {
    if (live.gone || live.detached) return;
    live.gone = true;
    clearTimers(live);
    live.console?.destroy();
    // A new boot of the same VM may already be under way: its session is not ours to end.
    const current = ctx.lives.get(live.id);
    if (current === undefined || current === live) ctx.agents.end(live.id, 'the VM exited');
    if (current === live) ctx.lives.delete(live.id);
    const sockets = live.running?.runtime.sockets ?? {};
    try {
      vms.deleteRuntime(live.id);
    } catch (err) {
      ctx.log.error({ vmId: live.id, err }, 'cannot delete runtime row');
    }
    removeSockets(live.dir, sockets);
    if (ctx.volumes) unlinkDisks(ctx.volumes, live.dir, live.log);
    ctx.network
      .release(live.id)
      .catch((err: unknown) => live.log.warn({ err }, 'cannot release the network of the VM'));

    const cur = vms.get(live.id);
    if (!cur) return;
    const how = info.signal ? `signal ${info.signal}` : `exit code ${String(info.code)}`;
    let to: VmState;
    let reason: string;
    let level: Level = 'audit';
    if (live.exitIntent) {
      ({ to, reason } = live.exitIntent);
    } else if (cur.state === 'stopping') {
      to = 'stopped';
      reason = cur.stateReason ?? 'stopped';
    } else if (cur.state === 'starting') {
      to = 'failed';
      reason = `hypervisor exited during boot (${how}): ${info.reason}`;
      level = 'error';
      live.failure = { code: 'BOOT_FAILED', reason };
      ctx.lastFailure.set(live.id, live.failure);
    } else if (info.code === 0 && !info.signal) {
      to = 'stopped';
      reason = `the guest powered off (${info.reason})`;
    } else {
      to = 'failed';
      reason = `hypervisor process exited unexpectedly (${how}): ${info.reason}`;
      level = 'warn';
    }
    if (cur.state === to || !isActiveVm(cur.state)) {
      ctx.log.info({ vmId: live.id, state: cur.state, how }, 'hypervisor process exited');
      return;
    }
    if (!canTransition(cur.state, to)) to = 'failed';
    ctx.transition(live.id, to, reason, level);
  }

  /**
   * Synchronous on purpose: a start right after an exit reuses the same socket
   * paths, and an unlink that ran late removed the new QEMU's sockets (the new
   * boot then waited forever for agent.sock).
   */
  function removeSockets(dir: string, sockets: Record<string, string>): void {
    for (const p of Object.values(sockets)) {
      // Only inside the VM's own folder: a runtime row is data, not authority.
      const abs = path.resolve(dir, p);
      if (!abs.startsWith(dir + path.sep)) continue;
      try {
        rmSync(abs, { force: true });
      } catch {
        /* already gone */
      }
    }
  }

  return { watchExit, removeSockets };
}
