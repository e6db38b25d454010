/**
 * Questions the VM manager asks a running guest's agent on a controller's
 * behalf. The answer comes from a hostile guest: it is checked against its
 * schema (its text already made inert by the agent link) before anyone sees it.
 */
import { BlockDevicesResult } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import type { VmBlockDevices } from '../../protocol/rpc.js';
import { formatIssues } from '../../protocol/validate.js';
import type { VmContext } from './context.js';

export function inspectPart(ctx: VmContext) {
  return {
    /** vm.blockDevices: the guest's disks now, with each mount's size and use. */
    async blockDevices(ref: string): Promise<VmBlockDevices> {
      const vm = ctx.find(ref);
      if (!ctx.agents.connected(vm.id))
        throw new MvirtError(
          'AGENT_UNAVAILABLE',
          `VM ${vm.name} is ${vm.state} and its agent is not connected; ask once it is ready`,
          { details: { state: vm.state } },
        );
      const out = await ctx.agents.call(vm.id, 'blockDevices', {}, ctx.options.agentCallTimeoutMs);
      const parsed = BlockDevicesResult.safeParse(out);
      if (!parsed.success)
        throw new MvirtError(
          'AGENT_ERROR',
          `the agent of ${vm.name} answered with an invalid device list: ${formatIssues(parsed.error)}`,
        );
      return { vm: vm.id, at: ctx.now(), blockDevices: parsed.data.blockDevices };
    },
  };
}
