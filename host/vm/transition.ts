/**
 * The one transition every VM state change goes through, the waiters on
 * states, and a boot's failure (the boot timer and failBoot).
 */
import { MvirtError, type ErrorCode } from '../../protocol/errors.js';
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import type { Level, VmContext } from './context.js';
import type { Live } from './live.js';
import { canTransition } from './states.js';

export function transitionPart(
  ctx: VmContext,
): Pick<VmContext, 'transition' | 'waitForState' | 'failBoot' | 'armBootTimer'> {
  const { vms, events, states } = ctx;

  /**
   * The only way a VM changes state: checks the transition table, persists
   * (compare-and-set on the old state, with its event, in one transaction),
   * publishes the retained state and the VM event, logs at audit level.
   */
  function transition(
    id: string,
    to: VmState,
    reason: string | null,
    level: Level = 'audit',
  ): VmRecord {
    const cur = vms.get(id);
    if (!cur) throw new MvirtError('VM_NOT_FOUND', `no VM with id ${id}`);
    const from = cur.state;
    if (!canTransition(from, to)) {
      throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} is ${from} and cannot become ${to}`, {
        details: { state: from },
      });
    }
    const at = ctx.now();
    ctx.store.db.transaction(() => {
      if (!vms.setState(id, from, to, reason, at)) {
        throw new MvirtError('VM_BAD_STATE', `VM ${cur.name} changed state concurrently`);
      }
      if (to === 'starting') vms.setStarted(id, at);
      events.append({
        level,
        component: 'vm',
        message: `${cur.name}: ${from} → ${to}${reason ? ` (${reason})` : ''}`,
        objects: [id],
        data: { from, to, reason },
      });
    })();
    const rec = vms.get(id)!;
    ctx.publishState(rec);
    events.publishVmEvent(id, {
      at,
      type: 'state',
      from,
      to,
      ...(reason ? { reason } : {}),
    });
    states.emit('state', rec, from);
    return rec;
  }

  /** Resolve once the VM reaches one of `ok`; reject when it reaches one of `fail`. */
  function waitForState(
    id: string,
    ok: readonly VmState[],
    fail: readonly VmState[],
  ): Promise<VmRecord> {
    return new Promise((resolve, reject) => {
      const settle = (rec: VmRecord): boolean => {
        if (ok.includes(rec.state)) {
          resolve(rec);
          return true;
        }
        if (fail.includes(rec.state)) {
          const f = ctx.lives.get(id)?.failure ?? ctx.lastFailure.get(id);
          const code: ErrorCode =
            rec.state === 'failed' ? (f?.code ?? 'BOOT_FAILED') : 'BOOT_FAILED';
          reject(
            new MvirtError(
              code,
              `VM ${rec.name} is ${rec.state}: ${rec.stateReason ?? 'no reason'}`,
            ),
          );
          return true;
        }
        return false;
      };
      const cur = vms.get(id);
      if (!cur) return reject(new MvirtError('VM_NOT_FOUND', `VM ${id} was deleted`));
      if (settle(cur)) return;
      const onState = (rec: VmRecord): void => {
        if (rec.id === id && settle(rec)) states.off('state', onState);
      };
      states.on('state', onState);
    });
  }

  /** Fail a booting VM: record why, move it to failed, kill the process. */
  function failBoot(live: Live, code: ErrorCode, reason: string): void {
    live.failure = { code, reason };
    ctx.lastFailure.set(live.id, live.failure);
    live.exitIntent = { to: 'failed', reason };
    const cur = vms.get(live.id);
    if (cur && canTransition(cur.state, 'failed')) transition(live.id, 'failed', reason, 'error');
    live.running?.signal('SIGKILL');
  }

  function armBootTimer(live: Live): void {
    if (live.bootTimer) clearTimeout(live.bootTimer);
    live.bootTimer = setTimeout(() => {
      live.bootTimer = undefined;
      if (vms.get(live.id)?.state !== 'starting') return;
      failBoot(
        live,
        'BOOT_TIMEOUT',
        `the agent did not say ready within ${ctx.options.bootTimeoutMs} ms (--boot-timeout-ms)`,
      );
    }, ctx.options.bootTimeoutMs);
  }

  return { transition, waitForState, failBoot, armBootTimer };
}
