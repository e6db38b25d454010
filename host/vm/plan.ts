/**
 * Dry runs of the vm.* methods (protocol/plan.ts). Each makes the checks of
 * its operation through the same functions (admit.ts, boot's steps, the
 * volume attach rules) and describes, through the backend's plans, what the
 * operation would start and send; nothing is locked, written or signalled.
 */
import path from 'node:path';
import type { DryRunPlan } from '../../protocol/plan.js';
import type { VmRecord } from '../../protocol/rpc.js';
import { isActiveVm, isInactiveVm } from '../../protocol/states.js';
import type { ControlOp } from '../hypervisors/types.js';
import { createPlan, type PlanBuilder } from '../plan.js';
import { admitCreate, capable, pausedLive, requireDown, upLive } from './admit.js';
import type { CreateVmParams, VmContext } from './context.js';
import { linkedSpec } from './disks.js';
import {
  ATTACH_STEPS,
  DETACH_STEPS,
  diskOf,
  hotplugOf,
  keepFor,
  requireNoSavedState,
  storage,
} from './hotplug.js';
import type { Live } from './live.js';
import { canTransition } from './states.js';
import { savable, SUSPEND_DIR } from './save.js';

export function vmPlans(ctx: VmContext) {
  const dataDir = path.dirname(ctx.options.vmDir);
  const begin = (method: string) => createPlan(method, dataDir);
  const control = (b: PlanBuilder, live: Live, op: ControlOp) => {
    for (const c of live.hv.plans?.control(op) ?? []) b.command(c);
  };
  const vmChange = (b: PlanBuilder, vm: VmRecord, ...to: string[]) =>
    b.change(`vm ${vm.name}: ${[vm.state, ...to].join(' → ')}`);

  /** vm.stop and vm.kill of a VM with no process: the record is put right. */
  const noProcess = (b: PlanBuilder, vm: VmRecord): DryRunPlan => {
    if (isActiveVm(vm.state)) vmChange(b, vm, 'stopped');
    else b.admit(`VM ${vm.name} is ${vm.state} already: nothing to do`);
    return b.done();
  };

  return {
    async create(p: CreateVmParams): Promise<DryRunPlan> {
      const b = begin('vm.create');
      const r = await admitCreate(ctx, p);
      b.admit(`name ${p.name} is free`)
        .admit(`${r.vcpus} vCPUs and ${r.memoryMiB} MiB within the host's limits`)
        .admit(`backend ${r.backend} known; image ${r.image} found`)
        .admit(`network ${r.net.mode} offered by this host`);
      if (r.disks.length > 0) b.admit(`volumes ${r.disks.map((d) => d.volume).join(', ')} free`);
      b.step('record the VM, its network and its disks (one transaction)');
      b.change(`vm ${p.name}: created (stopped; ${r.vcpus} vCPUs, ${r.memoryMiB} MiB)`);
      for (const d of r.disks)
        b.change(`volume ${d.volume}: attached to VM ${p.name}${d.readOnly ? ' read-only' : ''}`);
      return b.done();
    },

    async start(ref: string): Promise<DryRunPlan> {
      const b = begin('vm.start');
      await ctx.planBoot(ctx.find(ref).id, b);
      return b.done();
    },

    stop(ref: string, timeoutMs = ctx.options.stopTimeoutMs): DryRunPlan {
      const b = begin('vm.stop');
      const vm = ctx.find(ref);
      const live = ctx.liveOf(vm.id);
      if (!live) return noProcess(b, vm);
      if (vm.state !== 'stopping' && !canTransition(vm.state, 'stopping')) {
        b.admit(`VM ${vm.name} is ${vm.state}: nothing to do`);
        return b.done();
      }
      const { termTimeoutMs } = ctx.options;
      b.step(
        ctx.agents.connected(vm.id)
          ? 'ask the agent to power off (ACPI powerdown if it fails)'
          : 'ACPI powerdown',
        `wait up to ${timeoutMs} ms for the hypervisor to exit`,
        `then SIGTERM; after ${termTimeoutMs} ms SIGKILL`,
      );
      if (ctx.agents.connected(vm.id)) b.agent('power', { action: 'poweroff' });
      else control(b, live, 'powerdown');
      if (vm.state !== 'stopping') vmChange(b, vm, 'stopping', 'stopped');
      else vmChange(b, vm, 'stopped');
      return b.done();
    },

    kill(ref: string): DryRunPlan {
      const b = begin('vm.kill');
      const vm = ctx.find(ref);
      const live = ctx.liveOf(vm.id);
      if (!live?.running) return noProcess(b, vm);
      b.step('SIGKILL the hypervisor process', 'wait for its exit');
      b.signal(live.running.runtime.pid, 'SIGKILL');
      vmChange(b, vm, ...(vm.state === 'stopping' ? [] : ['stopping']), 'stopped');
      return b.done();
    },

    pause(ref: string): DryRunPlan {
      const b = begin('vm.pause');
      const vm = ctx.find(ref);
      capable(ctx, vm, 'pause');
      control(b.step('pause the vCPUs'), upLive(ctx, vm, 'pause'), 'pause');
      vmChange(b, vm, 'paused');
      return b.done();
    },

    async suspend(ref: string): Promise<DryRunPlan> {
      const b = begin('vm.suspend');
      const vm = ctx.find(ref);
      const { disks } = await savable(ctx, vm, 'suspend');
      b.admit(`VM ${vm.name} is ${vm.state}: its state can be saved`);
      if (disks.length > 0)
        b.admit(
          `its disks are those it was started with; they stay attached, unchanged, until it resumes`,
        );
      b.step('pause the VM', 'save its memory and device state', 'end its hypervisor process');
      b.create(`${path.join(ctx.dirOf(vm.id), SUSPEND_DIR)}/`);
      vmChange(b, vm, ...(vm.state === 'paused' ? [] : ['paused']), 'suspended');
      return b.done();
    },

    resume(ref: string): DryRunPlan {
      const b = begin('vm.resume');
      const vm = ctx.find(ref);
      capable(ctx, vm, 'pause');
      const live = pausedLive(ctx, vm);
      control(b.step('resume the vCPUs'), live, 'resume');
      vmChange(b, vm, live.pausedFrom ?? (live.agentExpected ? 'ready' : 'running'));
      return b.done();
    },

    reboot(ref: string): DryRunPlan {
      const b = begin('vm.reboot');
      const vm = ctx.find(ref);
      capable(ctx, vm, 'reboot');
      const live = upLive(ctx, vm, 'reboot');
      control(b.step('reset the machine', 'wait for the new agent'), live, 'reboot');
      vmChange(b, vm, 'starting', live.agentExpected ? 'ready' : 'running');
      return b.done();
    },

    delete(ref: string): DryRunPlan {
      const b = begin('vm.delete');
      const vm = ctx.find(ref);
      requireDown(vm);
      b.admit(`VM ${vm.name} is ${vm.state}`);
      b.step(
        'unlink its volumes',
        'remove its folder',
        'delete its rows',
        'clear its retained state',
      );
      b.remove(`${ctx.dirOf(vm.id)}/`);
      b.change(`vm ${vm.name}: deleted`);
      for (const d of ctx.store.volumes.disksOf(vm.id))
        b.change(`volume ${d.volume}: detached from VM ${vm.name} (deleted)`);
      return b.done();
    },

    async attachDisk(p: { vm: string; volume: string; readOnly?: boolean }): Promise<DryRunPlan> {
      const b = begin('vm.attachDisk');
      const v = storage(ctx);
      const vm = ctx.find(p.vm);
      requireNoSavedState(ctx, vm, 'attach');
      const req = { volume: p.volume, readOnly: p.readOnly ?? false };
      const { v: vol, disk } = v.attach.checkOne(vm.id, vm.name, req);
      b.admit(`volume ${vol.name} may be attached${disk.readOnly ? ' read-only' : ''}`);
      const how = isInactiveVm(vm.state) ? 'for its next boot' : 'hot-plugged';
      if (!isInactiveVm(vm.state)) {
        const h = hotplugOf(ctx, vm, 'attach');
        const linked = linkedSpec(h.dir, await v.attach.diskSpec(disk));
        for (const s of ATTACH_STEPS) b.step(s.name);
        b.create(...(linked.backing ?? []).map((x) => x.path), linked.path);
        for (const c of h.hv.plans?.attachDisk(linked) ?? []) b.command(c);
      } else b.step('record');
      b.change(`vm ${vm.name}: disk ${vol.id} attached (${how})`);
      return b.done();
    },

    detachDisk(p: { vm: string; volume: string; timeoutMs?: number }): DryRunPlan {
      const b = begin('vm.detachDisk');
      const v = storage(ctx);
      const vm = ctx.find(p.vm);
      const { vol } = diskOf(ctx, vm, p.volume);
      requireNoSavedState(ctx, vm, 'detach');
      b.admit(`volume ${vol.name} is a disk of VM ${vm.name}`);
      const how = isInactiveVm(vm.state) ? 'for its next boot' : 'hot-unplugged';
      if (!isInactiveVm(vm.state)) {
        const h = hotplugOf(ctx, vm, 'detach');
        for (const s of DETACH_STEPS) b.step(s.name);
        for (const c of h.hv.plans?.detachDisk(vol.id) ?? []) b.command(c);
        const keep = keepFor(ctx, vm.id, vol.id)();
        const gone = v.attach.linkNames(vol.id).filter((n) => !keep.has(n));
        b.remove(...gone.map((n) => path.join(h.dir, n)));
      } else b.step('record');
      b.change(`vm ${vm.name}: disk ${vol.id} detached (${how})`);
      return b.done();
    },
  };
}

export type VmPlans = ReturnType<typeof vmPlans>;
