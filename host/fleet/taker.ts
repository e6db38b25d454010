/**
 * The host's side of fleet placement (protocol/fleet.ts, docs/fleet.md): it
 * watches the fleet queue on the uplink and claims the requests it could take
 * now, oldest first. A claim reserves the room until the request leaves the
 * queue (its requester chose a host and sent it the request, which this
 * host's admission control still checks) or a lease runs out; the requester
 * picks one claim, so the host never acts on a claim by itself.
 *
 * Spread: a host claims after a delay that grows with how full it is
 * (SPREAD_MS × the larger of its used vCPU, memory and VM fractions), so the
 * requester, which takes the first claim, mostly gets the emptiest host's.
 * Every change of room (a VM or job state change) looks at the queue again.
 */
import { decode, sniffEncoding } from '../../protocol/codec.js';
import {
  FleetRequest,
  fleetQueueFilter,
  parseFleetQueueTopic,
  type FleetClaim,
} from '../../protocol/fleet.js';
import type { Bus } from '../broker/types.js';
import type { JobManager } from '../jobs/manager.js';
import type { PoolManager } from '../jobs/pools.js';
import type { MvirtLogger } from '../log.js';
import type { ImageStore } from '../vm/images.js';
import type { VmManager } from '../vm/manager.js';

/**
 * The longest claim delay, for a host that is all but full. Measured claim
 * round trips across a bridged Mosquitto pair are 1–3 ms (docs/fleet.md), so
 * 30 ms separates hosts whose fullness differs by a few percent.
 */
export const SPREAD_MS = 30;
/** A claim the requester neither took nor dropped is given up after this, and may be made again. */
export const LEASE_MS = 10_000;
/** Claims outstanding at once: a host with room for many does not claim the whole queue in one go. */
export const MAX_OUTSTANDING = 4;

interface Size {
  vcpus: number;
  memoryMiB: number;
}

interface Claim {
  size: Size | null; // null: a pool member, no new VM
  pool: string | null;
  timer: NodeJS.Timeout | undefined;
  lease: NodeJS.Timeout;
}

export interface FleetTaker {
  start(): Promise<void>;
  /** Requests in the queue now, as this host saw them (for tests and system figures). */
  queued(): number;
  close(): Promise<void>;
}

export function createFleetTaker(d: {
  bus: Pick<Bus, 'publish' | 'subscribe'>;
  prefix: string;
  hostId: string;
  labels: Record<string, string>;
  limits: { vcpus: number; memoryMiB: number; maxVms: number };
  vms: Pick<VmManager, 'canAdmit' | 'defaults' | 'allocated' | 'onStateChange'>;
  images: Pick<ImageStore, 'listCached'>;
  pools: Pick<PoolManager, 'exists' | 'get'>;
  jobs: Pick<JobManager, 'countByState' | 'onStateChange'>;
  log: MvirtLogger;
}): FleetTaker {
  const { log } = d;
  const queue = new Map<string, FleetRequest>();
  const claims = new Map<string, Claim>();
  /** Requests this host was excluded from or that expired: never claimed again. */
  const offs: (() => void)[] = [];
  let unsubscribe: (() => Promise<void>) | undefined;
  let scheduled = false;
  let closed = false;

  const drop = (topic: string): void => {
    const c = claims.get(topic);
    if (!c) return;
    clearTimeout(c.timer);
    clearTimeout(c.lease);
    claims.delete(topic);
  };

  function reserved(): { vms: number; vcpus: number; memoryMiB: number } {
    // Jobs accepted here and not running yet will take a VM of the default
    // size (most do: an ephemeral VM; a pool job takes none, so this errs on
    // the side of claiming less).
    const queuedJobs = d.jobs.countByState().queued ?? 0;
    const r = {
      vms: queuedJobs,
      vcpus: queuedJobs * d.vms.defaults.vcpus,
      memoryMiB: queuedJobs * d.vms.defaults.memoryMiB,
    };
    for (const c of claims.values()) {
      if (!c.size) continue;
      r.vms++;
      r.vcpus += c.size.vcpus;
      r.memoryMiB += c.size.memoryMiB;
    }
    return r;
  }

  /** How full the host is with its reservations, 0..1. */
  function fullness(): number {
    const a = d.vms.allocated();
    const r = reserved();
    const l = d.limits;
    return Math.min(
      1,
      Math.max(
        (a.vms + r.vms) / l.maxVms,
        (a.vcpus + r.vcpus) / l.vcpus,
        (a.memoryMiB + r.memoryMiB) / l.memoryMiB,
      ),
    );
  }

  /** Why this host cannot take the request now; null when it can (and what it would hold). */
  function fits(req: FleetRequest): { size: Size | null; pool: string | null } | null {
    if (Date.parse(req.expiresAt) <= Date.now()) return null;
    if (req.exclude?.includes(d.hostId)) return null;
    const need = req.need ?? {};
    if (need.host !== undefined && need.host !== d.hostId) return null;
    for (const [k, v] of Object.entries(need.labels ?? {})) if (d.labels[k] !== v) return null;
    const p = req.params;
    if (req.method === 'job.run') {
      const { vm, pool } = req.params;
      if (vm !== undefined && need.host === undefined) return null; // a VM names one host
      if (pool !== undefined) {
        if (!d.pools.exists(pool)) return null;
        let held = 0;
        for (const c of claims.values()) if (c.pool === pool) held++;
        return d.pools.get(pool).vms.ready - held > 0 ? { size: null, pool } : null;
      }
      if (vm !== undefined) return { size: null, pool: null };
    }
    const image = p.image ?? d.vms.defaults.image;
    const images = d.images.listCached();
    if (images !== undefined && !images.includes(image)) return null;
    const size = {
      vcpus: p.vcpus ?? d.vms.defaults.vcpus,
      memoryMiB: p.memoryMiB ?? d.vms.defaults.memoryMiB,
    };
    // vm.create makes a stopped VM: room now is what a later start needs.
    return d.vms.canAdmit(size, reserved(), { yielding: 'free' }) ? { size, pool: null } : null;
  }

  function claim(
    topic: string,
    req: FleetRequest,
    hold: { size: Size | null; pool: string | null },
  ) {
    const c: Claim = {
      ...hold,
      timer: undefined,
      lease: setTimeout(() => {
        drop(topic);
        evaluate();
      }, LEASE_MS),
    };
    c.lease.unref();
    claims.set(topic, c);
    // How full the host would be with this request too (its hold is reserved now).
    const delay = Math.round(SPREAD_MS * fullness());
    c.timer = setTimeout(() => {
      c.timer = undefined;
      const msg: FleetClaim = { request: req.id, hostId: d.hostId, at: new Date().toISOString() };
      void d.bus.publish(req.claimTo, JSON.stringify(msg), { qos: 1 });
    }, delay);
    c.timer.unref();
  }

  function evaluate(): void {
    if (scheduled || closed) return;
    scheduled = true;
    // Once per turn of the event loop, however many changes came together.
    setImmediate(() => {
      scheduled = false;
      if (closed) return;
      const waiting = [...queue].filter(([t]) => !claims.has(t));
      waiting.sort(([, a], [, b]) => a.at.localeCompare(b.at));
      for (const [topic, req] of waiting) {
        if (claims.size >= MAX_OUTSTANDING) return;
        const hold = fits(req);
        if (hold) claim(topic, req, hold);
      }
    });
  }

  function onQueue(topic: string, payload: Buffer): void {
    const names = parseFleetQueueTopic(d.prefix, topic);
    if (!names) return;
    // A new version of the request (or its removal) voids this host's claim of it.
    drop(topic);
    queue.delete(topic);
    if (payload.length === 0) return evaluate(); // placed or given up: room is free again
    let req: FleetRequest;
    try {
      const parsed = FleetRequest.safeParse(decode(payload, sniffEncoding(payload)));
      if (!parsed.success) throw new Error(parsed.error.issues[0]?.message ?? 'invalid');
      req = parsed.data;
    } catch (err) {
      log.warn({ topic, err: (err as Error).message }, 'ignoring an invalid fleet request');
      return;
    }
    // Claims go to the requester's own reply namespace, nowhere else.
    if (
      req.id !== names.requestId ||
      !req.claimTo.startsWith(`${d.prefix}/_clients/${names.clientId}/replies`)
    ) {
      log.warn({ topic }, 'ignoring a fleet request whose id or claim topic is not its own');
      return;
    }
    queue.set(topic, req);
    evaluate();
  }

  return {
    async start() {
      offs.push(d.vms.onStateChange(() => evaluate()));
      offs.push(d.jobs.onStateChange(() => evaluate()));
      unsubscribe = await d.bus.subscribe(fleetQueueFilter(d.prefix), onQueue);
    },
    queued: () => queue.size,
    async close() {
      closed = true;
      for (const off of offs.splice(0)) off();
      for (const t of [...claims.keys()]) drop(t);
      await unsubscribe?.();
    },
  };
}
