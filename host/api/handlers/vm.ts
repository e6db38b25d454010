/** The vm.* methods: thin adapters from validated params onto the VM manager. */
import type { VmManager } from '../../vm/manager.js';
import type { SnapshotManager } from '../../snapshots/manager.js';
import type { MutatingMethod } from '../../../protocol/plan.js';
import type { Handlers, Planners } from '../types.js';

export interface VmHandlerDeps {
  vms: VmManager;
  snapshots: SnapshotManager;
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
  | 'vm.detachDisk'
  | 'vm.blockDevices'
  | 'vm.snapshot'
  | 'vm.suspend'
  | 'snapshot.get'
  | 'snapshot.list'
  | 'snapshot.delete';

export const vmHandlers = ({ vms, snapshots }: VmHandlerDeps): Handlers<VmMethods> => ({
  'vm.create': ({ fromSnapshot, ...p }) =>
    fromSnapshot !== undefined ? vms.createFromSnapshot({ ...p, fromSnapshot }) : vms.create(p),
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
  'vm.blockDevices': (p) => vms.blockDevices(p.vm),
  'vm.snapshot': (p) => snapshots.take(p.vm, p.name),
  'vm.suspend': (p) => vms.suspend(p.vm),
  'snapshot.get': (p) => snapshots.get(p.snapshot),
  'snapshot.list': (p) => ({ snapshots: snapshots.list(p?.vm) }),
  'snapshot.delete': (p) => snapshots.delete(p.snapshot),
});

/** The methods above that change something: each has a dry run. */
type VmPlanned = Extract<VmMethods, MutatingMethod>;

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const vmPlanners = ({ vms, snapshots }: VmHandlerDeps): Planners<VmPlanned> => ({
  'vm.create': ({ fromSnapshot, ...p }) =>
    fromSnapshot !== undefined ? vms.planFromSnapshot({ ...p, fromSnapshot }) : vms.plan.create(p),
  'vm.start': (p) => vms.plan.start(p.vm),
  'vm.stop': (p) => vms.plan.stop(p.vm, p.timeoutMs),
  'vm.kill': (p) => vms.plan.kill(p.vm),
  'vm.pause': (p) => vms.plan.pause(p.vm),
  'vm.resume': (p) => vms.plan.resume(p.vm),
  'vm.reboot': (p) => vms.plan.reboot(p.vm),
  'vm.delete': (p) => vms.plan.delete(p.vm),
  'vm.attachDisk': (p) => vms.plan.attachDisk(p),
  'vm.detachDisk': (p) => vms.plan.detachDisk(p),
  'vm.snapshot': (p) => snapshots.plan.take(p.vm, p.name),
  'vm.suspend': (p) => vms.plan.suspend(p.vm),
  'snapshot.delete': (p) => snapshots.plan.remove(p.snapshot),
});
