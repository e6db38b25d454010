/**
 * Controller roles and scopes: what a controller may call and on which objects.
 *
 *  - viewer: read methods only (`system.info`, `*.get`, `*.list`, `job.logs`,
 *    `events.query`, `metrics.query`); subscribes to the public topics; never
 *    publishes to a VM's console.
 *  - operator: a viewer that may also change VMs and jobs (`vm.create` …
 *    `vm.delete`, `job.run`, `job.cancel`) and type on a VM's console.
 *    Volumes too (`volume.create` … `volume.delete`).
 *  - admin: an operator that may also shape the host's capacity (`pool.set`,
 *    `pool.delete`) and its images (`image.build`, `image.import`,
 *    `image.delete`; unscoped admins only, as images are shared).
 *
 * A scope is a label: a scoped controller sees and acts only on the VMs, jobs
 * and pools that carry its label, and what it creates carries that label (the
 * `owner` column). Users sharing a label share their objects; a label equal to
 * the user name means "only what I created". An unscoped controller sees all.
 * A user without a role is an admin, so users files written before roles keep
 * their meaning.
 */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** What one authenticated controller may do. */
export interface Access {
  role: Role;
  /** Owner label it is confined to; null = every object. */
  scope: string | null;
}

export const FULL_ACCESS: Access = { role: 'admin', scope: null };

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Does `have` include everything `need` may do? */
export const roleAtLeast = (have: Role, need: Role): boolean => RANK[have] >= RANK[need];

/**
 * The object a method acts on, for the scope check: a param that names it, or
 * `list` (results are filtered), `none` (host-wide read), `create` (the new
 * object takes the caller's label), `job-target` (job.run: its vm or pool).
 */
export type ScopeRule =
  | { kind: 'none' }
  /** A change to what every label shares (images): only an unscoped controller. */
  | { kind: 'host' }
  | { kind: 'list' }
  | { kind: 'create' }
  | { kind: 'job-target' }
  | { kind: 'vm'; param: 'vm'; optional?: boolean }
  | { kind: 'job'; param: 'jobId' }
  | { kind: 'pool'; param: 'name' }
  | { kind: 'volume'; param: 'volume' }
  | { kind: 'snapshot'; param: 'snapshot' }
  /** vm.attachDisk, vm.detachDisk: the VM and the volume must both be in scope. */
  | { kind: 'vm-and-volume' }
  /** vm.create: a new object, and every volume among its disks must be in scope. */
  | { kind: 'create-with-disks' }
  /** pool.set: a new object (as create), and the snapshot its VMs fork (fromSnapshot) must be in scope. */
  | { kind: 'create-from-snapshot' };

export interface Permission {
  role: Role;
  scope: ScopeRule;
}

export type ObjectKind = 'vm' | 'job' | 'pool' | 'volume' | 'snapshot';

/** Does an object with this owner label lie in the access's scope? */
export const inScope = (access: Access, owner: string | null | undefined): boolean =>
  access.scope === null || owner === access.scope;
