/**
 * What the page says about a VM's start, as data (no DOM, so that unit tests
 * run it under Node): the mark a restored VM gets in the list, and the
 * timelines the detail view draws on one scale, a restore (spawn → state
 * loaded → ready) beside a cold boot (spawn → kernel → init → agent
 * connected), with the restore's hygiene facts.
 */
import type { RestoreInfo, SnapshotRecord, VmRecord } from '../../protocol/records.js';

/**
 * The VM's restore if its last run was one. The record keeps `restore` across
 * later cold boots, so it counts only while no boot has reported since (still
 * starting) or when the boot's readyAtMs is the restore's own: the daemon sets
 * both from one measurement when a restored agent is ready.
 */
export function currentRestore(v: VmRecord): RestoreInfo | undefined {
  const r = v.restore;
  if (!r) return undefined;
  if (r.readyAtMs === undefined) return v.boot === undefined ? r : undefined;
  return v.boot?.readyAtMs === r.readyAtMs ? r : undefined;
}

export interface Mark {
  kind: 'fork' | 'resumed';
  text: string;
  /** The longer form (a tooltip). */
  title: string;
}

/** A snapshot's name when the page has its record, else its id. */
const snapName = (id: string, snaps: ReadonlyMap<string, SnapshotRecord>): string =>
  snaps.get(id)?.name ?? id;

/**
 * The list's mark: a fork names the snapshot it was made from (for good: it
 * is the VM's lineage), a resume says so while it is the VM's last run; both
 * with the identity generation of that restore.
 */
export function restoreMark(
  v: VmRecord,
  snaps: ReadonlyMap<string, SnapshotRecord> = new Map(),
): Mark | null {
  const r = currentRestore(v);
  const fromSnap = v.restoredFrom ?? (r && r.snapshot !== 'suspend' ? r.snapshot : undefined);
  const gen = r ? ` · gen ${r.generation}` : '';
  if (fromSnap !== undefined) {
    const resumed = r?.snapshot === 'suspend' ? ' · resumed' : '';
    return {
      kind: 'fork',
      text: `fork of ${snapName(fromSnap, snaps)}${resumed}${gen}`,
      title: `made from snapshot ${fromSnap}${r ? `; last run restored, identity generation ${r.generation}` : ''}`,
    };
  }
  if (r?.snapshot === 'suspend')
    return {
      kind: 'resumed',
      text: `resumed${gen}`,
      title: `resumed from its suspended state, identity generation ${r.generation}`,
    };
  return null;
}

export interface Segment {
  stage: string;
  ms: number;
  /** What the stage is (a tooltip). */
  about: string;
}

export interface Timeline {
  kind: 'boot' | 'restore';
  label: string;
  /** The VM this bar is of (a cold boot drawn for comparison is another VM's). */
  vm: string;
  segments: Segment[];
  totalMs: number;
  note: string;
}

/**
 * A cold boot, spawn → ready on the host clock when the record has readyAtMs:
 * the guest's own stages (guest clock from kernel start) and, first, what is
 * left of spawn → ready, mostly the hypervisor's start and firmware.
 */
export function bootTimeline(v: VmRecord, label = 'cold boot'): Timeline | null {
  const b = v.boot;
  if (!b) return null;
  const guest: Segment[] = [
    { stage: 'kernel', ms: b.initS * 1000, about: 'kernel start → /init (guest clock)' },
    {
      stage: 'init',
      ms: Math.max(0, b.agentStartS - b.initS) * 1000,
      about: '/init → agent started (guest clock)',
    },
    {
      stage: 'connect',
      ms: Math.max(0, b.connectedS - b.agentStartS) * 1000,
      about: 'agent started → connected to the host (guest clock)',
    },
  ];
  const guestMs = b.connectedS * 1000;
  const launch: Segment[] =
    b.readyAtMs !== undefined
      ? [
          {
            stage: 'launch',
            ms: Math.max(0, b.readyAtMs - guestMs),
            about:
              "spawn → ready (host clock) less the guest's stages: hypervisor start, firmware, the agent's hello",
          },
        ]
      : [];
  const ready =
    b.readyAtMs !== undefined ? `hypervisor spawn → ready ${secs(b.readyAtMs)} (host clock); ` : '';
  return {
    kind: 'boot',
    label,
    vm: v.id,
    segments: [...launch, ...guest],
    totalMs: b.readyAtMs ?? guestMs,
    note: `${ready}agent connected ${secs(guestMs)} after kernel start (guest clock)`,
  };
}

/** A restore, spawn → guest running (its state loaded) → agent ready, host clock. */
export function restoreTimeline(v: VmRecord, r: RestoreInfo): Timeline {
  const segments: Segment[] = [
    {
      stage: 'load',
      ms: r.spawnToRunningMs,
      about: 'hypervisor spawn → state loaded, guest running',
    },
  ];
  if (r.readyAtMs !== undefined)
    segments.push({
      stage: 'agent',
      ms: Math.max(0, r.readyAtMs - r.spawnToRunningMs),
      about: 'guest running → agent reconnected and ready',
    });
  const ready = r.readyAtMs !== undefined ? `, ready ${secs(r.readyAtMs)}` : ', not ready yet';
  return {
    kind: 'restore',
    label: r.snapshot === 'suspend' ? 'resume' : 'restore',
    vm: v.id,
    segments,
    totalMs: r.readyAtMs ?? r.spawnToRunningMs,
    note: `hypervisor spawn → state loaded ${secs(r.spawnToRunningMs)}${ready} (host clock)`,
  };
}

export interface Fact {
  key: string;
  label: string;
  value: string;
  /** 'bad': something a copy must not share was not fixed; 'pending': not reported yet. */
  level?: 'bad' | 'pending';
}

const PENDING = 'not reported yet';

/** A clock still further off than this after its sync (beyond the reading's bound) is shown as bad. */
const CLOCK_BAD_MS = 100;

/** What the restore fixed that a copy must not share: clock, entropy, identity, network, jobs. */
export function restoreFacts(
  v: VmRecord,
  r: RestoreInfo,
  names: { vm(id: string): string | undefined; snapshot(id: string): string | undefined },
): Fact[] {
  const pending = (key: string, label: string): Fact => ({
    key,
    label,
    value: PENDING,
    level: 'pending',
  });
  const from =
    r.snapshot === 'suspend'
      ? 'its suspended state'
      : `snapshot ${names.snapshot(r.snapshot) ?? r.snapshot}`;
  const facts: Fact[] = [
    { key: 'from', label: 'from', value: from },
    { key: 'generation', label: 'identity generation', value: String(r.generation) },
  ];
  facts.push(
    r.clockStepMs === undefined
      ? pending('clock', 'clock step')
      : { key: 'clock', label: 'clock step', value: signedMs(r.clockStepMs) },
  );
  if (r.clockErrorMs !== undefined) {
    const bound = r.clockErrorBoundMs ?? 0;
    facts.push({
      key: 'clockError',
      label: 'clock after',
      value: `${signedMs(r.clockErrorMs)} ± ${Math.ceil(bound)} ms off the host's`,
      ...(Math.abs(r.clockErrorMs) - bound > CLOCK_BAD_MS ? { level: 'bad' as const } : {}),
    });
  }
  facts.push(
    r.entropyBytes === undefined
      ? pending('entropy', 'entropy added')
      : { key: 'entropy', label: 'entropy added', value: `${r.entropyBytes} bytes` },
  );
  // The agent reports the rest with its first hello; the clock step comes with it.
  const reported = r.clockStepMs !== undefined;
  if (r.previousVm !== undefined) {
    const was = names.vm(r.previousVm);
    facts.push({
      key: 'identity',
      label: 'identity',
      value: `was ${was ? `${was} (${r.previousVm})` : r.previousVm}, now ${v.name} (${v.id})`,
    });
  } else if (!reported) facts.push(pending('identity', 'identity'));
  else if (r.snapshot === 'suspend')
    facts.push({ key: 'identity', label: 'identity', value: `unchanged (${v.id}): a resume` });
  else
    // A fork whose agent did not say it was another VM has not taken its own identity.
    facts.push({
      key: 'identity',
      label: 'identity',
      value: 'no change reported by the agent',
      level: 'bad',
    });
  facts.push(
    r.network === undefined
      ? reported
        ? { key: 'network', label: 'network', value: 'not reported by the agent' }
        : pending('network', 'network')
      : {
          key: 'network',
          label: 'network',
          value: r.network,
          ...(r.network === 'failed' ? { level: 'bad' as const } : {}),
        },
  );
  if (r.jobsDropped !== undefined)
    facts.push({ key: 'jobs', label: 'jobs dropped', value: String(r.jobsDropped) });
  return facts;
}

export interface StartView {
  /** This run's start first, then any cold boot to compare it with. */
  bars: Timeline[];
  /** The longest bar: every bar is drawn against it. */
  scaleMs: number;
  facts: Fact[];
  /** Why there is no bar (no boot reported yet). */
  empty?: string;
}

/**
 * The detail view's timelines. A restored VM's own `boot` is not a cold boot
 * (its agent's uptimes go on from the snapshot's guest), so a fork is compared
 * with the cold boot of the VM it was forked from, when the page has that VM
 * and its last run was a cold boot.
 */
export function startView(
  v: VmRecord,
  vms: ReadonlyMap<string, VmRecord>,
  snaps: ReadonlyMap<string, SnapshotRecord> = new Map(),
): StartView {
  const r = currentRestore(v);
  const bars: Timeline[] = [];
  let facts: Fact[] = [];
  if (r) {
    bars.push(restoreTimeline(v, r));
    const srcId = r.previousVm ?? snaps.get(r.snapshot)?.source.vm;
    const src = srcId !== undefined && srcId !== v.id ? vms.get(srcId) : undefined;
    const cold = src && !currentRestore(src) ? bootTimeline(src, `cold boot of ${src.name}`) : null;
    if (cold) bars.push(cold);
    facts = restoreFacts(v, r, {
      vm: (id) => vms.get(id)?.name,
      snapshot: (id) => snaps.get(id)?.name,
    });
  } else {
    const cold = bootTimeline(v);
    if (cold) bars.push(cold);
  }
  const scaleMs = Math.max(1, ...bars.map((b) => b.totalMs));
  return bars.length > 0
    ? { bars, scaleMs, facts }
    : {
        bars,
        scaleMs,
        facts,
        empty: 'no boot timeline yet (the agent reports it when it says hello)',
      };
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

function signedMs(ms: number): string {
  const v = Math.round(ms);
  return Math.abs(v) >= 10_000
    ? `${v > 0 ? '+' : ''}${(v / 1000).toFixed(1)} s`
    : `${v > 0 ? '+' : ''}${v} ms`;
}
