/**
 * Template snapshots: a fresh VM per job or pool member without a boot. For
 * each (image build, size, backend) mvirtd keeps one snapshot of a freshly
 * booted, ready VM; ephemeral VMs (jobs without a VM, pool members) are forks
 * of it. The first VM of a kind boots as before and is snapshotted the moment
 * it is ready, before anything runs on it, so that first job pays only the
 * save (~0.5 s) and every later one a restore instead of a boot.
 *
 * A template names its image build (the manifest key): when the image is
 * rebuilt or removed, its templates are deleted and the next VM boots afresh
 * and becomes the new template. A template that fails to restore (another
 * QEMU build since) is deleted the same way.
 */
import { DAEMON, runAs } from '../auth/actor.js';
import { FULL_ACCESS } from '../auth/roles.js';
import type { MvirtLogger } from '../log.js';
import type { Store } from '../store/index.js';
import type { ImageStore } from '../vm/images.js';
import { TEMPLATE_SNAPSHOT_PREFIX, type VmRecord } from '../../protocol/rpc.js';
import type { CreateVmParams } from '../vm/context.js';

/** Snapshot names of templates: reserved (vm.snapshot refuses them), so a user's is never taken for one. */
const TEMPLATE_PREFIX = TEMPLATE_SNAPSHOT_PREFIX;

export interface TemplateDeps {
  store: Store;
  images: ImageStore;
  vms: {
    create(p: CreateVmParams): Promise<VmRecord>;
    createFork(
      p: { name: string; fromSnapshot: string } & Pick<CreateVmParams, 'kind' | 'metadata'>,
    ): Promise<VmRecord>;
    /** Whether the VM's backend can save state (snapshots capability). */
    canSave(backend: string): boolean;
    defaults: { backend: string };
  };
  snapshots: {
    take(vm: string, name: string): Promise<{ id: string }>;
    delete(ref: string): Promise<unknown>;
  };
  log: MvirtLogger;
  /** Off: every ephemeral VM boots (--no-templates). */
  enabled: boolean;
}

export interface EphemeralVm {
  name: string;
  image: string;
  vcpus: number;
  memoryMiB: number;
  metadata: Record<string, string>;
}

export function createTemplates(d: TemplateDeps) {
  const log = d.log.child({ component: 'template' });
  /** Keys whose template is being taken now: one at a time per key. */
  const taking = new Set<string>();

  const nameOf = (image: string, imageKey: string, v: EphemeralVm) =>
    `${TEMPLATE_PREFIX}${image.slice(0, 24)}-${v.vcpus}x${v.memoryMiB}-${imageKey.slice(0, 12)}`;

  /** The usable template for this VM's kind, or null; stale ones of its image are deleted. */
  async function find(v: EphemeralVm): Promise<{ id: string; name: string } | null> {
    if (!d.enabled || !d.vms.canSave(d.vms.defaults.backend)) return null;
    const image = await d.images.resolve(v.image).catch(() => null);
    if (!image) return null;
    const want = nameOf(image.name, image.manifest.key, v);
    // One indexed lookup on every job's way; the scan below only once there is none.
    const hit = d.store.snapshots.find(want);
    if (hit?.state === 'ready' && hit.imageKey === image.manifest.key)
      return { id: hit.id, name: want };
    for (const s of d.store.snapshots.list()) {
      if (!s.name.startsWith(`${TEMPLATE_PREFIX}${image.name.slice(0, 24)}-`)) continue;
      if (s.imageKey !== image.manifest.key) {
        await drop(s.id, `image ${image.name} was rebuilt`);
        continue;
      }
    }
    return null;
  }

  async function drop(id: string, why: string): Promise<void> {
    log.info({ snapshot: id, why }, 'deleting a template snapshot');
    await d.snapshots
      .delete(id)
      .catch((err: unknown) =>
        log.warn({ snapshot: id, err: String(err) }, 'template not deleted (still in use?)'),
      );
  }

  return {
    /** Why ephemeral VMs boot instead of forking a template here, or null when they fork. */
    unavailable(): string | null {
      if (!d.enabled) return 'mvirtd runs with --no-templates';
      const backend = d.vms.defaults.backend;
      if (!d.vms.canSave(backend)) return `the ${backend} backend cannot save a VM's state`;
      return null;
    },

    /**
     * For dry runs, reading only: the name of this kind's template and whether
     * it exists now (null: this kind's VMs boot; see unavailable()).
     */
    async peek(v: EphemeralVm): Promise<{ name: string; exists: boolean } | null> {
      if (!d.enabled || !d.vms.canSave(d.vms.defaults.backend)) return null;
      const image = await d.images.resolve(v.image).catch(() => null);
      if (!image) return null;
      const name = nameOf(image.name, image.manifest.key, v);
      const s = d.store.snapshots.find(name);
      return { name, exists: s?.state === 'ready' && s.imageKey === image.manifest.key };
    },

    /**
     * An ephemeral VM, created (not started): a fork of its template when
     * there is one, else a plain VM (`template: 'wanted'` asks the caller to
     * hand it to adopt() once it is ready).
     */
    async create(v: EphemeralVm): Promise<{ vm: VmRecord; template: 'used' | 'wanted' | 'none' }> {
      const t = await find(v);
      if (t) {
        try {
          const vm = await d.vms.createFork({
            name: v.name,
            fromSnapshot: t.id,
            kind: 'ephemeral',
            metadata: v.metadata,
          });
          return { vm, template: 'used' };
        } catch (err) {
          log.warn({ template: t.name, err: String(err) }, 'template not usable; booting');
        }
      }
      const vm = await d.vms.create({ ...v, kind: 'ephemeral' });
      const wanted = d.enabled && d.vms.canSave(vm.backend);
      return { vm, template: wanted ? 'wanted' : 'none' };
    },

    /**
     * A fork of a template failed to start: the template goes (the next VM
     * boots and becomes a new one).
     */
    async failed(vm: VmRecord): Promise<void> {
      if (vm.restoredFrom) await drop(vm.restoredFrom, `VM ${vm.name} could not resume from it`);
    },

    /**
     * A freshly booted, ready VM of a kind without a template: snapshot it
     * now, before any job runs. Only a VM without volumes: a template's forks
     * are ephemeral VMs without disks.
     */
    async adopt(vm: VmRecord): Promise<void> {
      if (vm.disks?.length) return;
      const image = await d.images.resolve(vm.image).catch(() => null);
      if (!image) return;
      const v = {
        name: vm.name,
        image: vm.image,
        vcpus: vm.vcpus,
        memoryMiB: vm.memoryMiB,
        metadata: {},
      };
      const name = nameOf(image.name, image.manifest.key, v);
      if (taking.has(name) || d.store.snapshots.nameTaken(name)) return;
      taking.add(name);
      try {
        // mvirtd's own, whoever's job started it: no owner label, every scope may fork it.
        const s = await runAs({ actor: DAEMON, access: FULL_ACCESS }, () =>
          d.snapshots.take(vm.id, name),
        );
        log.info({ template: name, snapshot: s.id, from: vm.id }, 'template snapshot taken');
      } catch (err) {
        log.warn({ template: name, err: String(err) }, 'cannot take a template snapshot');
      } finally {
        taking.delete(name);
      }
    },
  };
}

export type Templates = ReturnType<typeof createTemplates>;
