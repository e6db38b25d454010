/**
 * The checks of a state-changing operation that both the operation and its
 * dry run (plan.ts) make, so that the two cannot drift: what they resolve is
 * what the operation then uses.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord } from '../../protocol/rpc.js';
import { isInactiveVm, isUpVm } from '../../protocol/states.js';
import { requireCapability } from '../hypervisors/index.js';
import type { Capability } from '../hypervisors/types.js';
import type { CreateVmParams, VmContext } from './context.js';
import type { Live } from './live.js';

/** vm.create: name, size, backend, image, network and disks, resolved. */
export async function admitCreate(ctx: VmContext, p: CreateVmParams) {
  const { vms, options, hypervisors, network } = ctx;
  if (ctx.closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
  if (vms.nameTaken(p.name)) {
    throw new MvirtError('VM_EXISTS', `a VM named ${p.name} already exists`);
  }
  const vcpus = p.vcpus ?? options.defaults.vcpus;
  const memoryMiB = p.memoryMiB ?? options.defaults.memoryMiB;
  const l = options.limits;
  if (vcpus > l.vcpus) {
    throw new MvirtError(
      'CAPACITY_EXCEEDED',
      `${vcpus} vCPUs exceed the host limit of ${l.vcpus} (--max-vcpus)`,
      { details: { limit: 'vcpus', requested: vcpus, max: l.vcpus } },
    );
  }
  if (memoryMiB > l.memoryMiB) {
    throw new MvirtError(
      'CAPACITY_EXCEEDED',
      `${memoryMiB} MiB exceed the host memory limit of ${l.memoryMiB} MiB (--max-memory-mib)`,
      { details: { limit: 'memoryMiB', requested: memoryMiB, max: l.memoryMiB } },
    );
  }
  const backend = p.backend ?? options.defaults.backend;
  if (!hypervisors.get(backend)) {
    throw new MvirtError(
      'BACKEND_UNAVAILABLE',
      `no backend named ${backend}; known: ${hypervisors.names().join(', ')}`,
    );
  }
  const image = p.image ?? options.defaults.image;
  await ctx.images.resolve(image);
  const net = network.resolve(p.network);
  if (p.disks?.length && !ctx.volumes)
    throw new MvirtError('CAPABILITY_UNSUPPORTED', 'this mvirtd has no volume storage');
  // Checked before anything is written, and again inside the transaction.
  const disks = ctx.volumes?.attach.resolve(p.disks ?? []) ?? [];
  return { vcpus, memoryMiB, backend, image, net, disks };
}

/** CAPABILITY_UNSUPPORTED unless the VM's backend can do this (before any state check). */
export function capable(ctx: VmContext, vm: VmRecord, cap: Capability): void {
  const hv = ctx.hypervisors.get(vm.backend);
  if (hv) requireCapability(hv, cap);
}

/** pause and reboot: the VM's process, while the VM is up. */
export function upLive(ctx: VmContext, vm: VmRecord, what: string): Live {
  const live = ctx.liveOf(vm.id);
  if (!live || !isUpVm(vm.state))
    throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is ${vm.state}; cannot ${what}`);
  return live;
}

/** delete: VM_RUNNING unless the VM is down (stopped or failed). */
export function requireDown(vm: VmRecord): void {
  if (!isInactiveVm(vm.state))
    throw new MvirtError('VM_RUNNING', `VM ${vm.name} is ${vm.state}; stop it before deleting it`, {
      details: { state: vm.state },
    });
}

/** resume: the VM's process, while the VM is paused. */
export function pausedLive(ctx: VmContext, vm: VmRecord): Live {
  const live = ctx.liveOf(vm.id);
  if (!live || vm.state !== 'paused')
    throw new MvirtError('VM_BAD_STATE', `VM ${vm.name} is ${vm.state}; cannot resume`);
  return live;
}
