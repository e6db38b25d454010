/**
 * Warm pools: `pool.set {name, image, min, max, vcpus, memoryMiB}` keeps `min`
 * VMs of an image booted and idle so that a job does not wait for a boot. A
 * job sent to a pool takes one idle VM exclusively (a claim), runs, and the VM
 * is destroyed afterwards; the pool refills. With jobs waiting, the pool boots
 * beyond `min` up to `max` VMs in all.
 *
 * Pool VMs are ordinary ephemeral VM rows tagged with the pool's name in their
 * metadata, so the VM manager and recovery need to know nothing about pools.
 * A boot that fails backs off (1 s doubling to a minute) instead of looping;
 * the pool record's `problem` says why meanwhile.
 *
 * Fast pools: members of a `snapshot: true` pool are forks of the template
 * snapshot of its image and size, those of a `fromSnapshot` pool forks of
 * that snapshot (pool-members.ts). A pool whose snapshot is gone makes no
 * member and says so, until pool.set gives it another.
 */
import { randomBytes } from 'node:crypto';
import type { Bus } from '../broker/types.js';
import type { EventLog } from '../events/log.js';
import type { MvirtLogger } from '../log.js';
import type {
  PoolDef,
  PoolRepo,
  SnapshotRepo,
  StoredPool,
  StoredSnapshot,
} from '../store/index.js';
import type { AgentSessions } from '../agent/sessions.js';
import type { VmManager } from '../vm/manager.js';
import { MvirtError } from '../../protocol/errors.js';
import type { ParamsOf, PoolRecord, VmRecord } from '../../protocol/rpc.js';
import type { Topics } from '../../protocol/topics.js';
import type { Templates } from '../snapshots/templates.js';
import type { VmDestroyer } from './destroyer.js';
import { errText } from './context.js';
import { META_POOL, poolMembers, type Member } from './pool-members.js';
import { poolPlans, type PoolNeeds } from './pool-plan.js';
import { poolSetCheck } from './pool-set.js';
import { warmUp } from './warm-up.js';
import { isAgentLiveVm, isInactiveVm } from '../../protocol/states.js';

export { META_POOL };

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 60_000;

export interface PoolManagerDeps {
  repo: PoolRepo;
  destroyer: VmDestroyer;
  vms: VmManager;
  agents: Pick<AgentSessions, 'call'>;
  events: EventLog;
  bus: Bus;
  topics: Topics;
  log: MvirtLogger;
  /** Snapshot pools fork their templates; absent, they boot (as with --no-templates). */
  templates?: Templates;
  /** The VM snapshots, for fromSnapshot pools. */
  snapshots: Pick<SnapshotRepo, 'find'>;
}

export type PoolManager = ReturnType<typeof createPoolManager>;

interface PoolLive {
  /** Jobs waiting for a VM of this pool (set by the job manager's queue walk). */
  demand: number;
  /** VMs whose boot() runs (from their row's creation until ready or failed). */
  booting: Set<string>;
  /** Boots started whose VM row does not exist yet (vms.create is async). */
  creating: number;
  backoffMs: number;
  retryAt: number;
  retryTimer?: NodeJS.Timeout;
  /** Why members cannot be made now (the record's `problem`); undefined while all is well. */
  problem?: string;
  problemKind?: 'boot' | 'snapshot';
}

export function createPoolManager(deps: PoolManagerDeps) {
  const { repo, vms, agents, events, bus, topics, destroyer, templates } = deps;
  const log = deps.log.child({ component: 'pool' });
  const members = poolMembers({ vms, ...(templates ? { templates } : {}) });
  /** A ready VM snapshot by id or name, or undefined. */
  const snapshotOf = (ref: string): StoredSnapshot | undefined => {
    const s = deps.snapshots.find(ref);
    return s?.state === 'ready' ? s : undefined;
  };
  const live = new Map<string, PoolLive>();
  /** VM id → job id for pool VMs taken by a job. */
  const claims = new Map<string, string>();
  let closing = false;
  /** Called when a pool VM becomes claimable (the job manager walks its queue). */
  let onAvailable: () => void = () => undefined;

  const now = (): string => new Date().toISOString();
  const freshLive = (): PoolLive => ({
    demand: 0,
    booting: new Set(),
    creating: 0,
    backoffMs: BACKOFF_MIN_MS,
    retryAt: 0,
  });
  const stateOf = (name: string): PoolLive => {
    let p = live.get(name);
    if (!p) {
      p = freshLive();
      live.set(name, p);
    }
    return p;
  };

  const membersOf = (name: string): VmRecord[] => vms.tagged(META_POOL, name);

  /** Ready VMs still running their warm-up exec: not claimable yet. */
  const warming = new Set<string>();
  const isIdle = (v: VmRecord): boolean =>
    v.state === 'ready' && !claims.has(v.id) && !warming.has(v.id);

  function toRecord(p: StoredPool): PoolRecord {
    const counts = { starting: 0, ready: 0, busy: 0 };
    for (const v of membersOf(p.name)) {
      if (claims.has(v.id)) counts.busy++;
      else if (warming.has(v.id)) counts.starting++;
      else if (v.state === 'ready') counts.ready++;
      else if (v.state === 'starting') counts.starting++;
    }
    const problem = live.get(p.name)?.problem;
    return { ...p, ...(problem !== undefined ? { problem } : {}), vms: counts };
  }

  function publish(name: string): void {
    const p = repo.get(name);
    const payload = p ? JSON.stringify(toRecord(p)) : '';
    bus
      .publish(topics.poolState(name), payload, { retain: true, qos: 1 })
      .catch((err: unknown) => log.warn({ err, pool: name }, 'publish failed'));
  }

  /**
   * Set or clear why pool `name` cannot make members. A new kind of problem is
   * an event too; the same again (the next failed try) updates the record only.
   */
  function setProblem(name: string, problem?: { kind: 'boot' | 'snapshot'; text: string }): void {
    const st = stateOf(name);
    if (st.problem === problem?.text) return;
    const news = problem !== undefined && problem.kind !== st.problemKind;
    st.problem = problem?.text;
    st.problemKind = problem?.kind;
    if (news)
      events.append({
        level: 'warn',
        component: 'pool',
        message: `pool ${name}: ${problem.text}`,
        objects: [`pool:${name}`],
      });
    publish(name);
  }

  function destroy(vmId: string, why: string, pool: string): void {
    claims.delete(vmId);
    // While shutting down, leave it: the next start's reconcile clears it away.
    // Once it is gone its place under max is free again (see reconcile).
    if (!closing) destroyer.destroy(vmId, why, () => reconcile(pool));
  }

  /**
   * What reconcile would do to pool `name` defined as `def` (none: deleted),
   * from the VMs as they are: which to destroy and why, and how many to boot.
   * Reads only; reconcile() acts on it, the dry runs describe it.
   */
  function needs(name: string, def: PoolDef | undefined, st: PoolLive): PoolNeeds {
    const members = membersOf(name);
    const destroy: { vm: VmRecord; why: string }[] = [];
    if (!def) {
      for (const v of members)
        if (!claims.has(v.id)) destroy.push({ vm: v, why: 'its pool was deleted' });
      return { destroy, missing: 0 };
    }
    // A member that failed or stopped is of no use: clear it away. A VM whose
    // boot() runs is left alone: it is `stopped` until vm.start admits it, and
    // boot() itself backs off and destroys it if the boot fails.
    for (const v of members) {
      if (isInactiveVm(v.state) && !claims.has(v.id) && !st.booting.has(v.id)) {
        destroy.push({ vm: v, why: `pool member is ${v.state}` });
      }
    }
    const usable = members.filter((v) => st.booting.has(v.id) || isAgentLiveVm(v.state));
    // max bounds every member whose process may still run: one that is
    // stopping (destroyed after its job) holds its place until it is down.
    const alive = members.filter((v) => st.booting.has(v.id) || !isInactiveVm(v.state));
    const spare = usable.filter((v) => !claims.has(v.id));
    const desired = def.min + st.demand;
    // More idle VMs than wanted (min was lowered): let the extra ones go.
    const idle = spare.filter(isIdle);
    for (let extra = spare.length - desired; extra > 0 && idle.length > 0; extra--) {
      destroy.push({ vm: idle.pop()!, why: 'the pool shrank' });
    }
    // Boots whose VM row does not exist yet are not among the members: count them.
    const missing = Math.min(
      desired - spare.length - st.creating,
      def.max - alive.length - st.creating,
    );
    return { destroy, missing };
  }

  /** Bring one pool to its target: min idle VMs, more while jobs wait, never above max. */
  function reconcile(name: string): void {
    if (closing) return;
    const def = repo.get(name);
    const st = stateOf(name);
    const n = needs(name, def, st);
    for (const d of n.destroy) destroy(d.vm.id, d.why, name);
    if (!def) return;
    let missing = n.missing;
    if (missing <= 0) return;
    if (def.fromSnapshot !== undefined && !snapshotOf(def.fromSnapshot)) {
      // Not a back-off loop: nothing will bring that snapshot back.
      setProblem(name, {
        kind: 'snapshot',
        text: `its snapshot ${def.fromSnapshot} was deleted: no VM can be made; give the pool another (fromSnapshot) or let its VMs boot (snapshot: false)`,
      });
      return;
    }
    const wait = st.retryAt - Date.now();
    if (wait > 0) {
      st.retryTimer ??= setTimeout(() => {
        st.retryTimer = undefined;
        reconcile(name);
      }, wait);
      return;
    }
    while (missing-- > 0) {
      if (!vms.canAdmit({ vcpus: def.vcpus, memoryMiB: def.memoryMiB })) break;
      st.creating++;
      void boot(def, st);
    }
  }

  async function boot(def: StoredPool, st: PoolLive): Promise<void> {
    let id: string | undefined;
    let made: Member | undefined;
    let creating = true;
    const created = (): void => {
      if (creating) st.creating--;
      creating = false;
    };
    try {
      made = await members.create(
        def,
        `${def.name.slice(0, 50)}-${randomBytes(4).toString('hex')}`,
      );
      id = made.vm.id;
      created();
      if (!repo.get(def.name)) {
        // pool.delete came while the row was being made: it could not see it.
        destroy(id, 'its pool was deleted', def.name);
        return;
      }
      st.booting.add(id);
      warming.add(id);
      await vms.start(id, true);
      // Fresh and ready, nothing run yet: the moment to keep it as the template.
      if (made.template === 'wanted') await templates!.adopt(vms.get(id));
      made.release();
      // A pool's promise is a VM ready to run: through the spawn path once.
      await warmUp(agents, id, log);
      warming.delete(id);
      st.booting.delete(id);
      st.backoffMs = BACKOFF_MIN_MS;
      setProblem(def.name);
      publish(def.name);
      onAvailable();
    } catch (err) {
      made?.release();
      created();
      if (id) {
        st.booting.delete(id);
        warming.delete(id);
      }
      if (err instanceof MvirtError && err.code === 'CAPACITY_EXCEEDED') {
        if (id) destroy(id, 'no capacity', def.name);
        return;
      }
      // A fork of a template that cannot start: the template goes, the next member boots.
      if (made?.template === 'used') await templates!.failed(made.vm);
      st.retryAt = Date.now() + st.backoffMs;
      log.warn(
        { pool: def.name, err: String(err), retryInMs: st.backoffMs },
        'pool VM boot failed',
      );
      st.backoffMs = Math.min(st.backoffMs * 2, BACKOFF_MAX_MS);
      if (!closing)
        setProblem(def.name, {
          kind: 'boot',
          text: `its last VM could not be made: ${errText(err)}`,
        });
      if (id) destroy(id, 'its boot failed', def.name);
      reconcile(def.name);
    }
  }

  // The retained pool record counts its VMs: republish when one changes.
  const offState = vms.onStateChange((vm) => {
    const name = vm.metadata[META_POOL];
    if (name !== undefined) publish(name);
  });

  /** pool.set's checks (shared with its dry run): the definition it would store. */
  const checkSet = poolSetCheck({
    repo,
    vms,
    snapshotOf,
    ...(templates ? { templates } : {}),
    closing: () => closing,
  });

  /** pool.delete's check (shared with its dry run): the pool (POOL_NOT_FOUND otherwise). */
  function checkDelete(name: string): StoredPool {
    const p = repo.get(name);
    if (!p) throw new MvirtError('POOL_NOT_FOUND', `no pool named ${name}`);
    return p;
  }

  return {
    /** Dry runs (pool-plan.ts): the same checks as set and delete, a plan, no change. */
    plan: poolPlans({
      vms,
      checkSet,
      checkDelete,
      // A pool's live state read, never created: a dry run leaves no trace.
      needs: (name, def) => needs(name, def, live.get(name) ?? freshLive()),
      ...(templates ? { templates } : {}),
      members: membersOf,
      claimOf: (vmId) => claims.get(vmId),
    }),
    onVmAvailable(fn: () => void): void {
      onAvailable = fn;
    },
    async set(p: ParamsOf<'pool.set'>): Promise<PoolRecord> {
      const { old, def } = await checkSet(p);
      if (closing) throw new MvirtError('SHUTTING_DOWN', 'mvirtd is shutting down');
      const stored = repo.put(def, now());
      events.append({
        level: 'audit',
        component: 'pool',
        message: `pool ${p.name}: ${old ? 'updated' : 'created'}`,
        objects: [`pool:${p.name}`, `image:${def.image}`],
        data: def,
      });
      // A new definition: try at once, and the old one's problem is no longer news.
      const st = stateOf(p.name);
      st.retryAt = 0;
      st.problem = st.problemKind = undefined;
      reconcile(p.name);
      publish(p.name);
      return toRecord(stored);
    },
    get(name: string): PoolRecord {
      const p = repo.get(name);
      if (!p) throw new MvirtError('POOL_NOT_FOUND', `no pool named ${name}`);
      return toRecord(p);
    },
    exists: (name: string): boolean => repo.get(name) !== undefined,
    list: (): PoolRecord[] => repo.list().map(toRecord),
    delete(name: string): Record<string, never> {
      checkDelete(name);
      repo.delete(name);
      events.append({
        level: 'audit',
        component: 'pool',
        message: `pool ${name}: deleted`,
        objects: [`pool:${name}`],
      });
      const st = live.get(name);
      if (st?.retryTimer) clearTimeout(st.retryTimer);
      live.delete(name);
      reconcile(name); // idle members go; claimed ones go after their job
      publish(name);
      return {};
    },

    /** Take an idle ready VM of the pool for a job; undefined when none is idle. */
    claim(name: string, jobId: string): string | undefined {
      if (!repo.get(name)) return undefined;
      const vm = membersOf(name).find(isIdle);
      if (!vm) return undefined;
      claims.set(vm.id, jobId);
      reconcile(name);
      publish(name);
      return vm.id;
    },
    /** A job waits for this pool: count it so the pool boots beyond min (up to max). */
    demand(name: string): void {
      stateOf(name).demand++;
    },
    /** After a daemon restart: a job already holds this VM. */
    restoreClaim(_name: string, vmId: string, jobId: string): void {
      claims.set(vmId, jobId);
    },
    /** Once per queue walk: the demand counts were rebuilt, act on them. */
    reconcileAll(): void {
      for (const p of repo.list()) {
        reconcile(p.name);
        stateOf(p.name).demand = 0;
      }
      // Members of pools that no longer exist.
      for (const v of vms.tagged(META_POOL)) {
        const name = v.metadata[META_POOL]!;
        if (!repo.get(name) && !claims.has(v.id) && v.state !== 'stopping')
          destroy(v.id, 'its pool no longer exists', name);
      }
    },
    /** A pool VM's job ended (its VM is destroyed by the job manager). */
    release(vmId: string): void {
      claims.delete(vmId);
    },
    /** Stop acting; resolves once the VM destroys already under way are done. */
    async close(): Promise<void> {
      closing = true;
      offState();
      for (const st of live.values()) if (st.retryTimer) clearTimeout(st.retryTimer);
      await destroyer.drain();
    },
  };
}
