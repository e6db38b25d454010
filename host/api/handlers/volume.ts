/** The volume.* methods: thin adapters from validated params onto the volume manager. */
import type { VolumeManager } from '../../volumes/manager.js';
import type { MutatingMethod } from '../../../protocol/plan.js';
import type { Handlers, Planners } from '../types.js';

export interface VolumeHandlerDeps {
  volumes: VolumeManager;
}

type VolumeMethods =
  | 'volume.create'
  | 'volume.get'
  | 'volume.list'
  | 'volume.resize'
  | 'volume.delete'
  | 'volume.clone'
  | 'volume.snapshot'
  | 'volume.snapshots'
  | 'volume.restore'
  | 'volume.deleteSnapshot';

export const volumeHandlers = ({ volumes }: VolumeHandlerDeps): Handlers<VolumeMethods> => ({
  'volume.create': (p) => volumes.create(p),
  'volume.get': (p) => volumes.get(p.volume),
  'volume.list': () => ({ volumes: volumes.list() }),
  'volume.resize': (p) => volumes.resize(p.volume, p.sizeMiB),
  'volume.delete': (p) => volumes.delete(p.volume),
  'volume.clone': (p) => volumes.clone(p),
  'volume.snapshot': (p) => volumes.snapshot(p),
  'volume.snapshots': async (p) => ({ snapshots: await volumes.snapshots(p.volume) }),
  'volume.restore': (p) => volumes.restore(p),
  'volume.deleteSnapshot': (p) => volumes.deleteSnapshot(p),
});

/** The methods above that change something: each has a dry run. */
type VolumePlanned = Extract<VolumeMethods, MutatingMethod>;

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const volumePlanners = ({ volumes }: VolumeHandlerDeps): Planners<VolumePlanned> => ({
  'volume.create': (p) => volumes.plan.create(p),
  'volume.resize': (p) => volumes.plan.resize(p.volume, p.sizeMiB),
  'volume.delete': (p) => volumes.plan.delete(p.volume),
  'volume.clone': (p) => volumes.plan.clone(p),
  'volume.snapshot': (p) => volumes.plan.snapshot(p),
  'volume.restore': (p) => volumes.plan.restore(p),
  'volume.deleteSnapshot': (p) => volumes.plan.deleteSnapshot(p),
});
