/**
 * Spares: a fresh VM already resumed from its kind's template, waiting for
 * the next job that names no VM. A fork of a template reaches `ready` in
 * about half a second under TCG (spawn, state load, the guest agent's
 * reconnect), five to seven times a warm job's round trip; a spare made
 * while nothing waits takes that out of the job's path, as E2B's and
 * Firecracker's warm pools do.
 *
 * A spare runs a warm-up exec (warm-up.ts) before its first job, as a pool's
 * VM does, and says it is ready for one with an event.
 * Kept per kind (image, vCPUs, memory), made only once the kind has a
 * template and a job of that kind ran, at most `count` per kind, and gone
 * after `idleMs` with no job of its kind. A spare never costs another VM its
 * room: it is made only where it fits now, and a boot that needs its room
 * destroys it first (the VM manager's yielding VMs, vm/boot.ts).
 *
 * A spare is an ephemeral VM tagged META_SPARE. A job that takes it owns it
 * like a VM booted for it (destroyed when the job ends); after a daemon
 * restart, spares no job took are destroyed (recover()).
 */
import { randomBytes } from 'node:crypto';
import type { AgentSessions } from '../agent/sessions.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type { Templates } from '../snapshots/templates.js';
import type { VmManager } from '../vm/manager.js';
import type { VmDestroyer } from './destroyer.js';
import { warmUp } from './warm-up.js';

/** VM metadata key of a spare: its kind. */
export const META_SPARE = 'mvirt.spare';

export interface SpareOptions {
  /** Spares per kind; 0: none (every job without a VM forks or boots its own). */
  count: number;
  /** A kind with no job for this long has its spares destroyed. */
  idleMs: number;
}

export const DEFAULT_SPARE_OPTIONS: SpareOptions = { count: 1, idleMs: 10 * 60_000 };

export interface SpareKind {
  image: string;
  vcpus: number;
  memoryMiB: number;
}

export interface SpareDeps {
  vms: Pick<VmManager, 'get' | 'start' | 'tagged' | 'canAdmit' | 'setYielding'>;
  templates: Templates;
  agents: Pick<AgentSessions, 'call'>;
  destroyer: VmDestroyer;
  events: Pick<EventLog, 'append'>;
  log: MvirtLogger;
  options: SpareOptions;
}

const keyOf = (k: SpareKind): string => `${k.image}/${k.vcpus}x${k.memoryMiB}`;

export function createSpares(d: SpareDeps) {
  const log = d.log.child({ component: 'spare' });
  const { count, idleMs } = d.options;
  /** Spares no job has taken, by VM id → kind key (starting ones too). */
  const free = new Map<string, string>();
  /** Ready, their warm-up exec (warm-up.ts) still running: taken last, and a job waits for it. */
  const warming = new Map<string, Promise<void>>();
  /** Per kind in use: its idle timer, and whether a spare is being made. */
  const kinds = new Map<string, { kind: SpareKind; idle: NodeJS.Timeout; making: boolean }>();
  let closed = false;

  const freeOf = (key: string): string[] =>
    [...free].filter(([, k]) => k === key).map(([id]) => id);

  /**
   * A free spare of this kind that is ready now, warmed up before one still
   * warming (one deleted by hand is forgotten).
   */
  function readyOf(key: string): string | undefined {
    const ready = freeOf(key).filter((id) => {
      try {
        return d.vms.get(id).state === 'ready';
      } catch {
        free.delete(id);
        return false;
      }
    });
    return ready.find((id) => !warming.has(id)) ?? ready[0];
  }

  /** Destroy spares; resolves once every one is gone. */
  function release(ids: string[], why: string): Promise<void> {
    return Promise.all(
      ids.map(
        (id) =>
          new Promise<void>((resolve) => {
            free.delete(id);
            log.info({ vmId: id, why }, 'spare VM destroyed');
            d.destroyer.destroy(id, `spare: ${why}`, resolve);
            // Already on its way out (destroy() is then a no-op without `after`).
            if (!d.destroyer.isDestroying(id)) resolve();
          }),
      ),
    ).then(() => undefined);
  }

  d.vms.setYielding({ ids: () => [...free.keys()], release });

  /** Make this kind's missing spares, where they fit without displacing anything. */
  async function fill(key: string): Promise<void> {
    const k = kinds.get(key);
    if (!k || k.making || closed) return;
    k.making = true;
    try {
      while (!closed && kinds.get(key) === k && freeOf(key).length < count) {
        const t = await d.templates.peek({ ...k.kind, name: '', metadata: {} });
        if (!t?.exists) return; // no template yet: the kind's next job boots and makes it
        if (!d.vms.canAdmit(k.kind, undefined, { yielding: 'held' })) return;
        const made = await d.templates.create({
          ...k.kind,
          name: `spare-${randomBytes(5).toString('hex')}`,
          metadata: { [META_SPARE]: key },
        });
        free.set(made.vm.id, key);
        if (made.template !== 'used') {
          // The template went between peek and create: no boots for spares.
          await release([made.vm.id], 'its template is gone');
          return;
        }
        try {
          const vm = await d.vms.start(made.vm.id, true);
          const warm = warmUp(d.agents, vm.id, log);
          warming.set(vm.id, warm);
          await warm;
          warming.delete(vm.id);
          d.events.append({
            level: 'info',
            component: 'job',
            message: `spare VM ${vm.name} ready for the next job without a VM of ${key}`,
            objects: [vm.id],
            data: { kind: key },
          });
        } catch (err) {
          warming.delete(made.vm.id);
          const gone = !free.has(made.vm.id); // taken by a boot that needed the room
          await release([made.vm.id], 'it could not resume');
          if (gone) return;
          log.warn({ kind: key, err: String(err) }, 'spare VM could not resume; its template goes');
          await d.templates.failed(made.vm);
          return;
        }
      }
    } catch (err) {
      log.warn({ kind: key, err: String(err) }, 'no spare VM made');
    } finally {
      k.making = false;
    }
  }

  function idleTimer(key: string): NodeJS.Timeout {
    const t = setTimeout(() => {
      kinds.delete(key);
      void release(freeOf(key), `no job of kind ${key} for ${Math.round(idleMs / 1000)} s`);
    }, idleMs);
    t.unref();
    return t;
  }

  return {
    /**
     * A job without a VM of this kind is being placed: a spare's id for it
     * (ready, or still resuming) or null; either way, the kind's spares are
     * made up again.
     */
    take(kind: SpareKind): string | null {
      if (count === 0 || closed) return null;
      const key = keyOf(kind);
      const k = kinds.get(key);
      if (k) k.idle.refresh();
      else kinds.set(key, { kind, idle: idleTimer(key), making: false });
      // Only a ready one: a spare still resuming might fail, and the job with it.
      const id = readyOf(key);
      if (id !== undefined) free.delete(id);
      void fill(key);
      return id ?? null;
    },

    /** Resolves once a taken spare's warm-up exec is done (at once when it was). */
    warmed(id: string): Promise<void> {
      return warming.get(id) ?? Promise.resolve();
    },

    /** The kind's job VM is ready (and its template made, if it had none): make its spares. */
    jobVmReady(kind: SpareKind): void {
      if (kinds.has(keyOf(kind))) void fill(keyOf(kind));
    },

    /** The spare this job would take now, for dry runs. */
    peek(kind: SpareKind): string | null {
      if (count === 0) return null;
      return readyOf(keyOf(kind)) ?? null;
    },

    /** After a daemon restart: spares that no job took (those are `taken`) are destroyed. */
    recover(taken: Set<string>): void {
      const left = d.vms.tagged(META_SPARE).filter((v) => !taken.has(v.id));
      if (left.length)
        void release(
          left.map((v) => v.id),
          'left from before the restart',
        );
    },

    close(): void {
      closed = true;
      for (const k of kinds.values()) clearTimeout(k.idle);
      kinds.clear();
    },
  };
}

export type Spares = ReturnType<typeof createSpares>;
