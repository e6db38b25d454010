/**
 * The controller API where controllers reach it: on the host's own broker,
 * and with --uplink the same routes and the same role and scope checks on the
 * external broker, whose replies go back over it.
 */
import { createAccessCheck } from '../api/access.js';
import type { RouteTable } from '../api/types.js';
import { createApi, type Api } from '../api/server.js';
import type { Bus } from '../broker/types.js';
import type { AppendEvent } from '../events/log.js';
import { createFleetTaker } from '../fleet/taker.js';
import { createFleetView } from '../fleet/view.js';
import type { JobManager } from '../jobs/manager.js';
import type { PoolManager } from '../jobs/pools.js';
import type { MvirtLogger } from '../log.js';
import type { SnapshotManager } from '../snapshots/manager.js';
import type { Store } from '../store/index.js';
import type { Uplink } from '../uplink/link.js';
import type { ImageStore } from '../vm/images.js';
import type { VmManager } from '../vm/manager.js';
import type { Topics } from '../../protocol/topics.js';

export function createApis(d: {
  bus: Bus;
  uplink: Uplink | null;
  topics: Topics;
  routes: RouteTable;
  store: Store;
  vms: VmManager;
  snapshots: SnapshotManager;
  audit: (e: AppendEvent) => void;
  log: MvirtLogger;
  /** With --uplink: what the host's claims of fleet requests look at (host/fleet/taker.ts). */
  fleet: {
    prefix: string;
    hostId: string;
    labels: Record<string, string>;
    limits: { vcpus: number; memoryMiB: number; maxVms: number };
    images: ImageStore;
    pools: PoolManager;
    jobs: JobManager;
  };
}): { api: Api; start(): Promise<void>; close(): Promise<void> } {
  const access = createAccessCheck({
    resolveVm: (ref) => d.vms.resolveId(ref),
    resolveVolume: (ref) => d.store.volumes.find(ref)?.id,
    resolveSnapshot: (ref) => d.snapshots.resolveId(ref),
    ownerOf: (kind, id) => d.store.owners.get(kind, id),
  });
  const common = { topics: d.topics, routes: d.routes, access, audit: d.audit };
  const api = createApi({ ...common, bus: d.bus, log: d.log });
  const uplinkApi = d.uplink
    ? createApi({ ...common, bus: d.uplink, log: d.log.child({ via: 'uplink' }) })
    : null;
  const taker = d.uplink
    ? createFleetTaker({
        ...d.fleet,
        bus: d.uplink,
        vms: d.vms,
        log: d.log.child({ component: 'fleet' }),
      })
    : null;
  const view = d.uplink
    ? createFleetView({ ...d.fleet, uplink: d.uplink, local: d.bus, log: d.log })
    : null;
  return {
    api,
    async start() {
      await api.start();
      await uplinkApi?.start();
      await taker?.start();
      await view?.start();
    },
    async close() {
      await view?.close();
      await taker?.close();
      await api.close();
      await uplinkApi?.close();
    },
  };
}
