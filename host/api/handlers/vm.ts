/** The vm.* methods: thin adapters from validated params onto the VM manager. */
import type { VmManager } from '../../vm/manager.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { Handlers, Planners } from '../types.js';

export interface VmHandlerDeps {
  vms: VmManager;
}

type VmMethods =
  | 'vm.create'
  | 'vm.get'
  | 'vm.list'
  | 'vm.start'
  | 'vm.stop'
  | 'vm.kill'
  | 'vm.pause'
  | 'vm.resume'
  | 'vm.reboot'
  | 'vm.delete'
  | 'vm.attachDisk'
  | 'vm.detachDisk';

export const vmHandlers = ({ vms }: VmHandlerDeps): Handlers<VmMethods> => ({
  'vm.create': (p) => vms.create(p),
  'vm.get': (p) => vms.get(p.vm),
  'vm.list': (p) => ({ vms: vms.list(p?.state) }),
  'vm.start': (p) => vms.start(p.vm, p.wait ?? false),
  'vm.stop': (p) => vms.stop(p.vm, p.timeoutMs),
  'vm.kill': (p) => vms.kill(p.vm),
  'vm.pause': (p) => vms.pause(p.vm),
  'vm.resume': (p) => vms.resume(p.vm),
  'vm.reboot': (p) => vms.reboot(p.vm),
  'vm.delete': (p) => vms.delete(p.vm),
  'vm.attachDisk': (p) => vms.attachDisk(p),
  'vm.detachDisk': (p) => vms.detachDisk(p),
});

type VmPlanned =
  | 'vm.create'
  | 'vm.start'
  | 'vm.stop'
  | 'vm.kill'
  | 'vm.pause'
  | 'vm.resume'
  | 'vm.reboot'
  | 'vm.delete'
  | 'vm.attachDisk'
  | 'vm.detachDisk';

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const vmPlanners = (_deps: VmHandlerDeps): Planners<VmPlanned> => ({
  'vm.create': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.create yet');
  },
  'vm.start': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.start yet');
  },
  'vm.stop': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.stop yet');
  },
  'vm.kill': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.kill yet');
  },
  'vm.pause': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.pause yet');
  },
  'vm.resume': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.resume yet');
  },
  'vm.reboot': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.reboot yet');
  },
  'vm.delete': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.delete yet');
  },
  'vm.attachDisk': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.attachDisk yet');
  },
  'vm.detachDisk': () => {
    throw new MvirtError('INTERNAL', 'no dry run for vm.detachDisk yet');
  },
});
