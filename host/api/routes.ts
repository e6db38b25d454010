/**
 * The one route table: every RPC method of protocol/rpc.ts maps to its params
 * schema (from the protocol, never redefined here), the permission it needs
 * and its handler. The types require an entry for every method, so a method
 * added to the protocol does not compile until it is routed and given a
 * permission.
 */
import { isMutating, PARAMS, type MutatingMethod, type RpcMethod } from '../../protocol/rpc.js';
import type { Permission } from '../auth/roles.js';
import type { Handlers, Planners, RouteTable } from './types.js';
import { systemHandlers, type SystemDeps } from './handlers/system.js';
import { vmHandlers, vmPlanners, type VmHandlerDeps } from './handlers/vm.js';
import { eventHandlers, type EventHandlerDeps } from './handlers/events.js';
import { jobHandlers, jobPlanners, type JobHandlerDeps } from './handlers/job.js';
import { poolHandlers, poolPlanners, type PoolHandlerDeps } from './handlers/pool.js';
import { metricsHandlers, type MetricsHandlerDeps } from './handlers/metrics.js';
import { volumeHandlers, volumePlanners, type VolumeHandlerDeps } from './handlers/volume.js';
import { imageHandlers, imagePlanners, type ImageHandlerDeps } from './handlers/image.js';
import { fsHandlers, fsPlanners, type FsHandlerDeps } from './handlers/fs.js';
import { portHandlers, portPlanners, type PortHandlerDeps } from './handlers/port.js';

export type RouteDeps = SystemDeps &
  VmHandlerDeps &
  EventHandlerDeps &
  JobHandlerDeps &
  PoolHandlerDeps &
  MetricsHandlerDeps &
  VolumeHandlerDeps &
  ImageHandlerDeps &
  FsHandlerDeps &
  PortHandlerDeps;

const read = (scope: Permission['scope']): Permission => ({ role: 'viewer', scope });
const operate = (scope: Permission['scope']): Permission => ({ role: 'operator', scope });
const vm = { kind: 'vm', param: 'vm' } as const;
const job = { kind: 'job', param: 'jobId' } as const;
const pool = { kind: 'pool', param: 'name' } as const;
const volume = { kind: 'volume', param: 'volume' } as const;
const snapshot = { kind: 'snapshot', param: 'snapshot' } as const;

/** Who may call what (host/auth/roles.ts describes the roles; docs/security.md the table). */
export const PERMISSIONS: { readonly [M in RpcMethod]: Permission } = {
  'system.info': read({ kind: 'none' }),
  'vm.create': operate({ kind: 'create-with-disks' }),
  'vm.get': read(vm),
  'vm.list': read({ kind: 'list' }),
  'vm.start': operate(vm),
  'vm.stop': operate(vm),
  'vm.kill': operate(vm),
  'vm.pause': operate(vm),
  'vm.resume': operate(vm),
  'vm.reboot': operate(vm),
  'vm.delete': operate(vm),
  // Both objects change: the VM's disks and the volume's attachments.
  'vm.attachDisk': operate({ kind: 'vm-and-volume' }),
  'vm.detachDisk': operate({ kind: 'vm-and-volume' }),
  'vm.blockDevices': read(vm),
  // The snapshot takes the caller's label; the VM must be in scope.
  'vm.snapshot': operate(vm),
  'vm.suspend': operate(vm),
  'snapshot.get': read(snapshot),
  'snapshot.list': read({ kind: 'list' }),
  'snapshot.delete': operate(snapshot),
  'job.run': operate({ kind: 'job-target' }),
  'job.get': read(job),
  'job.list': read({ kind: 'list' }),
  'job.cancel': operate(job),
  'job.signal': operate(job),
  'job.stdin': operate(job),
  'job.resize': operate(job),
  'job.logs': read(job),
  'pool.set': { role: 'admin', scope: { kind: 'create-from-snapshot' } },
  'pool.get': read(pool),
  'pool.list': read({ kind: 'list' }),
  'pool.delete': { role: 'admin', scope: pool },
  'image.list': read({ kind: 'none' }),
  'image.get': read({ kind: 'none' }),
  // Images are the host's, shared by every label: changing them is an admin's.
  'image.delete': { role: 'admin', scope: { kind: 'host' } },
  'image.build': { role: 'admin', scope: { kind: 'host' } },
  'image.import': { role: 'admin', scope: { kind: 'host' } },
  'volume.create': operate({ kind: 'create' }),
  'volume.get': read(volume),
  'volume.list': read({ kind: 'list' }),
  'volume.resize': operate(volume),
  'volume.delete': operate(volume),
  // The template must be in scope; the clone takes the caller's label.
  'volume.clone': operate(volume),
  'volume.snapshot': operate(volume),
  'volume.snapshots': read(volume),
  'volume.restore': operate(volume),
  'volume.deleteSnapshot': operate(volume),
  'events.query': read({ kind: 'list' }),
  'metrics.query': read({ ...vm, optional: true }),
  // A guest's files are as much its inside as what a job prints: operators only,
  // like job.run (a viewer reads records, not what is in a VM).
  'fs.write': operate(vm),
  'fs.read': operate(vm),
  'fs.stat': operate(vm),
  'fs.list': operate(vm),
  'fs.mkdir': operate(vm),
  'fs.remove': operate(vm),
  'fs.move': operate(vm),
  // The same power over the guest as job.run; a non-loopback hostAddress needs admin (host/ports/forwards.ts).
  'port.forward': operate(vm),
  // A forward's VM must be in the caller's scope: checked by the forwards (the id is not a scoped object).
  'port.list': read({ kind: 'none' }),
  'port.close': operate({ kind: 'none' }),
};

export function createRoutes(deps: RouteDeps): RouteTable {
  const handlers: Handlers<RpcMethod> = {
    ...systemHandlers(deps),
    ...vmHandlers(deps),
    ...eventHandlers(deps),
    ...jobHandlers(deps),
    ...poolHandlers(deps),
    ...metricsHandlers(deps),
    ...volumeHandlers(deps),
    ...imageHandlers(deps),
    ...fsHandlers(deps),
    ...portHandlers(deps),
  };
  // Every mutating method's dry run (protocol/plan.ts): the compiler keeps this complete too.
  const planners: Planners<MutatingMethod> = {
    ...vmPlanners(deps),
    ...jobPlanners(deps),
    ...poolPlanners(deps),
    ...volumePlanners(deps),
    ...imagePlanners(deps),
    ...fsPlanners(deps),
    ...portPlanners(deps),
  };
  const table = {} as Record<RpcMethod, unknown>;
  for (const m of Object.keys(PARAMS) as RpcMethod[]) {
    table[m] = {
      schema: PARAMS[m],
      permission: PERMISSIONS[m],
      handler: handlers[m],
      ...(isMutating(m) ? { plan: planners[m] } : {}),
    };
  }
  return table as RouteTable;
}
