/**
 * The one place an RPC is authorised, before its handler runs: the caller's
 * role against the method's permission (routes.ts PERMISSIONS), then its
 * scope against the object the method names. List results are filtered to
 * the scope afterwards. A refusal is a FORBIDDEN error (server.ts turns it
 * into a reply and an audit event); nothing has been changed by then.
 */
import type {
  EventRecord,
  JobRecord,
  PoolRecord,
  RpcMethod,
  SnapshotRecord,
  VmRecord,
  VolumeRecord,
} from '../../protocol/rpc.js';
import {
  inScope,
  roleAtLeast,
  type Access,
  type ObjectKind,
  type Permission,
} from '../auth/roles.js';

export interface AccessDeps {
  /** A VM id or name → the VM's id (undefined when there is none). */
  resolveVm(ref: string): string | undefined;
  /** A volume id or name → the volume's id. */
  resolveVolume(ref: string): string | undefined;
  /** A VM snapshot id or name → its id. */
  resolveSnapshot(ref: string): string | undefined;
  ownerOf(kind: ObjectKind, id: string): string | null;
}

export interface Refusal {
  reason: string;
  /** The objects the refused call named (for the audit record). */
  objects: string[];
}

type Params = Record<string, unknown> | undefined;
const str = (p: Params, k: string): string | undefined =>
  p && typeof p[k] === 'string' ? p[k] : undefined;

export function createAccessCheck(d: AccessDeps) {
  function outOfScope(access: Access, kind: ObjectKind, ref: string | undefined): Refusal | null {
    if (ref === undefined || access.scope === null) return null;
    // A VM or volume that does not exist is left to the handler (…_NOT_FOUND); a job
    // or pool id without this scope's label is refused whether or not it exists.
    const resolve: Partial<Record<ObjectKind, (ref: string) => string | undefined>> = {
      vm: d.resolveVm,
      volume: d.resolveVolume,
      snapshot: d.resolveSnapshot,
    };
    const id = (resolve[kind] ?? ((r: string) => r))(ref);
    if (id === undefined) return null;
    return inScope(access, d.ownerOf(kind, id))
      ? null
      : { reason: `${kind} ${ref} is outside your scope ${access.scope}`, objects: [id] };
  }
  /** null when the call may go ahead. */
  function check(
    access: Access,
    method: RpcMethod,
    perm: Permission,
    params: unknown,
  ): Refusal | null {
    if (!roleAtLeast(access.role, perm.role))
      return {
        reason: `${method} needs the ${perm.role} role; you are ${access.role === 'admin' ? 'an' : 'a'} ${access.role}`,
        objects: [],
      };
    const p = params as Params;
    const rule = perm.scope;
    switch (rule.kind) {
      case 'none':
      case 'list':
      case 'create':
        return null;
      case 'host':
        return access.scope === null
          ? null
          : {
              reason: `${method} changes what every scope shares; your scope is ${access.scope}`,
              objects: [],
            };
      case 'vm':
        return outOfScope(access, 'vm', str(p, rule.param));
      case 'job':
        return outOfScope(access, 'job', str(p, rule.param));
      case 'pool':
        return outOfScope(access, 'pool', str(p, rule.param));
      case 'volume':
        return outOfScope(access, 'volume', str(p, rule.param));
      case 'snapshot':
        return outOfScope(access, 'snapshot', str(p, rule.param));
      case 'vm-and-volume':
        return (
          outOfScope(access, 'vm', str(p, 'vm')) ?? outOfScope(access, 'volume', str(p, 'volume'))
        );
      case 'create-with-disks': {
        // A fork: the snapshot it resumes from must be in scope.
        const snap = outOfScope(access, 'snapshot', str(p, 'fromSnapshot'));
        if (snap) return snap;
        const disks = p && Array.isArray(p.disks) ? (p.disks as unknown[]) : [];
        for (const disk of disks) {
          const ref = (disk as Params) && str(disk as Params, 'volume');
          const r = outOfScope(access, 'volume', ref);
          if (r) return r;
        }
        return null;
      }
      case 'create-from-snapshot':
        return outOfScope(access, 'snapshot', str(p, 'fromSnapshot'));
      case 'job-target':
        return outOfScope(access, 'vm', str(p, 'vm')) ?? outOfScope(access, 'pool', str(p, 'pool'));
    }
  }

  const mine = (access: Access, kind: ObjectKind, id: string): boolean =>
    inScope(access, d.ownerOf(kind, id));

  /** Narrow a list result to the caller's scope. */
  function filter(access: Access, method: RpcMethod, result: unknown): unknown {
    if (access.scope === null) return result;
    switch (method) {
      case 'vm.list': {
        const r = result as { vms: VmRecord[] };
        return { ...r, vms: r.vms.filter((v) => mine(access, 'vm', v.id)) };
      }
      case 'job.list': {
        const r = result as { jobs: JobRecord[] };
        return { ...r, jobs: r.jobs.filter((j) => mine(access, 'job', j.jobId)) };
      }
      case 'pool.list': {
        const r = result as { pools: PoolRecord[] };
        return { ...r, pools: r.pools.filter((x) => mine(access, 'pool', x.name)) };
      }
      case 'snapshot.list': {
        const r = result as { snapshots: SnapshotRecord[] };
        return { ...r, snapshots: r.snapshots.filter((x) => mine(access, 'snapshot', x.id)) };
      }
      case 'volume.list': {
        const r = result as { volumes: VolumeRecord[] };
        return { ...r, volumes: r.volumes.filter((x) => mine(access, 'volume', x.id)) };
      }
      case 'events.query': {
        const r = result as { events: EventRecord[] };
        return {
          ...r,
          events: r.events.filter((e) =>
            e.objects.some(
              (o) =>
                mine(access, 'vm', o) ||
                mine(access, 'job', o) ||
                mine(access, 'pool', o) ||
                mine(access, 'volume', o) ||
                mine(access, 'snapshot', o),
            ),
          ),
        };
      }
      default:
        return result;
    }
  }

  return { check, filter };
}

export type AccessCheck = ReturnType<typeof createAccessCheck>;
