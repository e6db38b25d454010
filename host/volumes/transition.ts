/**
 * The volume state machine and the one function every volume change goes
 * through: it persists (a compare-and-set on the state, with the audit event,
 * in one transaction), publishes the retained record on
 * `<root>/volume/<id>/state` (an empty retained message once deleted) and
 * logs. Changes that keep the state (created, resized) go through it too.
 */
import type { Bus } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type { Store } from '../store/index.js';
import { MvirtError } from '../../protocol/errors.js';
import type { VolumeRecord, VolumeState } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';

/** Which state may follow which (one more read-only user of an attached volume is no change of state). */
export const VOLUME_TRANSITIONS: Readonly<Record<VolumeState, readonly VolumeState[]>> = {
  available: ['attached'],
  attached: ['available'],
};

export const canVolumeTransition = (from: VolumeState, to: VolumeState): boolean =>
  VOLUME_TRANSITIONS[from].includes(to);

export interface VolumeChange {
  /** The new state, when it changes. */
  to?: VolumeState;
  /** What happened, for the audit event (`<name>: <what>`). */
  what: string;
  /** Other objects the event touches (VMs, the template). */
  objects?: readonly string[];
  data?: unknown;
  /** Writes to make in the same transaction (rows of a new volume, sizes). */
  write?: () => void;
}

export interface VolumeTransitionDeps {
  store: Store;
  events: EventLog;
  bus: Pick<Bus, 'publish'>;
  topics: Topics;
  log: MvirtLogger;
}

export function createVolumeTransitions(d: VolumeTransitionDeps) {
  const { store, events } = d;
  const repo = store.volumes;
  const now = (): string => new Date().toISOString();

  function publish(id: string, rec: VolumeRecord | undefined): void {
    d.bus
      .publish(d.topics.volumeState(id), rec ? JSON.stringify(rec) : '', { retain: true, qos: 1 })
      .catch((err: unknown) => d.log.warn({ err, volume: id }, 'publish failed'));
  }

  /**
   * Apply one change to volume `id` (which `write` may be creating). Runs
   * synchronously: callers inside a bigger transaction (vm.create) stay in it.
   */
  function change(id: string, c: VolumeChange): VolumeRecord {
    const at = now();
    let name = id;
    store.db.transaction(() => {
      c.write?.();
      const cur = repo.get(id);
      if (!cur) throw new MvirtError('VOLUME_NOT_FOUND', `no volume with id ${id}`);
      name = cur.name;
      if (c.to !== undefined && c.to !== cur.state) {
        if (!canVolumeTransition(cur.state, c.to) || !repo.setState(id, cur.state, c.to, at))
          throw new MvirtError(
            'VOLUME_IN_USE',
            `volume ${cur.name} is ${cur.state} and cannot become ${c.to}`,
          );
      }
      events.append({
        level: 'audit',
        component: 'volume',
        message: `${cur.name}: ${c.what}${c.to && c.to !== cur.state ? ` (${cur.state} → ${c.to})` : ''}`,
        objects: [id, ...(c.objects ?? [])],
        ...(c.data !== undefined ? { data: c.data } : {}),
      });
    })();
    const rec = repo.get(id)!;
    publish(id, rec);
    d.log.debug({ volume: id, name, what: c.what }, 'volume changed');
    return rec;
  }

  /** The end of a volume: its row goes with its audit event; the retained record is cleared. */
  function remove(id: string, name: string, write: () => void): void {
    store.db.transaction(() => {
      write();
      events.append({
        level: 'audit',
        component: 'volume',
        message: `${name}: deleted`,
        objects: [id],
      });
    })();
    publish(id, undefined);
  }

  return { change, remove, publish };
}

export type VolumeTransitions = ReturnType<typeof createVolumeTransitions>;
