/**
 * How a pool makes a member (a VM row, created, not started), by the pool's
 * kind:
 *
 *  - plain: an ephemeral VM of the pool's image that boots;
 *  - `fromSnapshot`: a fork of that VM snapshot (it resumes, no boot);
 *  - `snapshot: true`: a fork of mvirtd's template snapshot of the pool's image
 *    and size (host/snapshots/templates.ts). While there is none, one member
 *    boots and becomes it once ready; the pool's other members wait for that
 *    and then fork it, instead of each booting.
 */
import type { VmRecord } from '../../protocol/rpc.js';
import type { Templates } from '../snapshots/templates.js';
import type { StoredPool } from '../store/index.js';
import type { VmManager } from '../vm/manager.js';

/** VM metadata key that ties a VM to its pool (survives a daemon restart). */
export const META_POOL = 'mvirt.pool';

export interface Member {
  vm: VmRecord;
  /**
   * `used`: a fork of the template (templates.failed() if it cannot start);
   * `wanted`: it boots and is to become the template (templates.adopt() once
   * ready); `none`: neither.
   */
  template: 'used' | 'wanted' | 'none';
  /**
   * Lets the pool's next member be made (call once this one is adopted or
   * failed; again is harmless). Until then a `wanted` member holds the others.
   */
  release(): void;
}

export interface PoolMemberDeps {
  vms: Pick<VmManager, 'create' | 'createFork'>;
  /** Absent: `snapshot: true` pools boot their members. */
  templates?: Templates;
}

const noop = (): void => undefined;

export function poolMembers(d: PoolMemberDeps) {
  /** Per template pool: the last member creation, which the next one waits for. */
  const gates = new Map<string, Promise<void>>();

  async function fromTemplate(def: StoredPool, name: string, templates: Templates) {
    const before = gates.get(def.name) ?? Promise.resolve();
    let open: () => void = noop;
    const gate = new Promise<void>((resolve) => (open = resolve));
    gates.set(def.name, gate);
    const release = (): void => {
      open();
      if (gates.get(def.name) === gate) gates.delete(def.name);
    };
    await before;
    try {
      const made = await templates.create({
        name,
        image: def.image,
        vcpus: def.vcpus,
        memoryMiB: def.memoryMiB,
        metadata: { [META_POOL]: def.name },
      });
      // A fork or a plain boot: the next member need not wait for it.
      if (made.template !== 'wanted') release();
      return { ...made, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  return {
    /** A new member of pool `def` named `name`, created, not started. */
    async create(def: StoredPool, name: string): Promise<Member> {
      const metadata = { [META_POOL]: def.name };
      if (def.fromSnapshot !== undefined) {
        const vm = await d.vms.createFork({
          name,
          fromSnapshot: def.fromSnapshot,
          kind: 'ephemeral',
          metadata,
        });
        return { vm, template: 'none', release: noop };
      }
      if (def.snapshot && d.templates) return fromTemplate(def, name, d.templates);
      const vm = await d.vms.create({
        name,
        image: def.image,
        vcpus: def.vcpus,
        memoryMiB: def.memoryMiB,
        kind: 'ephemeral',
        metadata,
      });
      return { vm, template: 'none', release: noop };
    },
  };
}
