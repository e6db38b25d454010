/**
 * Stop: graceful first (the agent's power-off, else ACPI powerdown where the
 * backend can), then SIGTERM, then SIGKILL, each with its timeout.
 */
import type { RunningVm } from '../hypervisors/types.js';
import { MvirtError } from '../../protocol/errors.js';
import type { VmContext } from './context.js';
import { exitsWithin, type Live } from './live.js';

export function stopPart(ctx: VmContext): Pick<VmContext, 'stopProcess'> {
  const { options } = ctx;

  async function stopProcess(live: Live, running: RunningVm, timeoutMs: number): Promise<void> {
    const state = ctx.vms.get(live.id)?.state;
    if (live.pausedFrom !== undefined || state === 'paused') {
      // A paused guest cannot react to a power-off request.
      await running.resume().catch(() => undefined);
    }
    const powerdown = (): Promise<void> =>
      live.hv.capabilities.gracefulShutdown
        ? running.powerdown().catch((err: unknown) => {
            live.log.warn({ err: String(err) }, 'ACPI powerdown failed');
          })
        : Promise.resolve();
    if (ctx.agents.connected(live.id)) {
      live.log.info('asking the agent to power off');
      ctx.agents
        .call(live.id, 'power', { action: 'poweroff' }, options.agentCallTimeoutMs)
        .catch((err: unknown) => {
          if (live.gone) return;
          live.log.info({ err: String(err) }, 'agent power-off failed; trying ACPI powerdown');
          return powerdown();
        });
    } else {
      live.log.info('ACPI powerdown');
      void powerdown();
    }
    if (await exitsWithin(running, timeoutMs)) return;
    live.log.warn({ timeoutMs }, 'graceful stop timed out; SIGTERM');
    running.signal('SIGTERM');
    if (await exitsWithin(running, options.termTimeoutMs)) return;
    live.log.warn({ timeoutMs: options.termTimeoutMs }, 'SIGTERM ignored; SIGKILL');
    running.signal('SIGKILL');
    if (await exitsWithin(running, options.killTimeoutMs)) return;
    throw new MvirtError('HYPERVISOR_ERROR', `VM ${live.id} did not exit after SIGKILL`);
  }

  return { stopProcess };
}
