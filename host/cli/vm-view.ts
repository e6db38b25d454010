/**
 * How VM records read in a terminal: the one-line result of an action, the
 * `mvirt vm get` details, the `mvirt vm ls` table, and the state changes a
 * long operation prints on stderr while it runs.
 */
import type { MvirtClient } from '../../protocol/client.js';
import { inert } from '../../protocol/inert.js';
import type { RestoreInfo, VmRecord, VmState } from '../../protocol/rpc.js';
import type { Context } from './command.js';
import { duration, keyValues, mib, relativeTime, table } from './output.js';

/**
 * "suspended (1.2 MiB saved)": the state and why, without saying the state
 * twice when the reason starts with it (`suspended (… bytes saved)`).
 */
export function stateText(vm: VmRecord): string {
  const r = vm.stateReason;
  if (!r) return vm.state;
  const m = new RegExp(`^${vm.state} \\((.*)\\)$`).exec(r);
  return `${vm.state} (${m ? m[1]! : r})`;
}

export function vmLine(vm: VmRecord): string {
  return `${inert(`${vm.name} (${vm.id}) is ${stateText(vm)}`)}\n`;
}

/** Snapshot ids → names, for showing where restored VMs came from (ids when unknown). */
export type SnapshotNames = ReadonlyMap<string, string>;

/** "base (snap-…)", or the id alone with a note when the snapshot is gone. */
export function snapshotRef(id: string, names: SnapshotNames): string {
  const name = names.get(id);
  return name === undefined ? `${id} (deleted or not visible)` : `${name} (${id})`;
}

/** What the last restore did, in one line: where from, how fast, what the agent fixed. */
export function restoreText(r: RestoreInfo, names: SnapshotNames): string {
  const from =
    r.snapshot === 'suspend'
      ? 'resumed from its suspended state'
      : `resumed from snapshot ${names.get(r.snapshot) ?? r.snapshot}`;
  const parts = [`running ${duration(r.spawnToRunningMs)} after spawn`];
  if (r.readyAtMs !== undefined) parts.push(`ready after ${duration(r.readyAtMs)}`);
  if (r.clockStepMs !== undefined) {
    const after =
      r.clockErrorMs === undefined
        ? ''
        : ` (now ${Math.round(r.clockErrorMs)} ± ${Math.ceil(r.clockErrorBoundMs ?? 0)} ms off)`;
    parts.push(`clock stepped ${Math.round(r.clockStepMs)} ms${after}`);
  }
  if (r.entropyBytes !== undefined) parts.push(`${r.entropyBytes} bytes of entropy added`);
  if (r.network !== undefined && r.network !== 'none') parts.push(`network ${r.network}`);
  if (r.jobsDropped) parts.push(`${r.jobsDropped} jobs of the source ended`);
  if (r.previousVm !== undefined) parts.push(`was ${r.previousVm}`);
  return `${from} (generation ${r.generation}): ${parts.join(', ')}`;
}

export function vmDetails(vm: VmRecord, now: number, names: SnapshotNames = new Map()): string {
  const when = (t: string | undefined): string | undefined =>
    t ? `${relativeTime(t, now)} (${t})` : undefined;
  const meta = Object.entries(vm.metadata ?? {});
  return keyValues([
    ['Name', vm.name],
    ['ID', vm.id],
    ['State', stateText(vm)],
    [
      'Resume',
      vm.state === 'suspended'
        ? `\`mvirt vm start ${vm.name}\` resumes it; \`mvirt vm stop ${vm.name}\` drops the saved state`
        : undefined,
    ],
    ['Kind', vm.kind],
    ['Image', vm.image],
    ['Backend', vm.backend + (vm.accel ? ` (${vm.accel})` : '')],
    ['vCPUs', String(vm.vcpus)],
    ['Memory', mib(vm.memoryMiB)],
    ['Network', vm.network?.mode],
    ['IP', vm.ip],
    ['MAC', vm.mac],
    ['PID', vm.pid === undefined ? undefined : String(vm.pid)],
    ['Agent', vm.agentVersion],
    [
      'Boot',
      vm.boot?.readyAtMs !== undefined ? `ready after ${duration(vm.boot.readyAtMs)}` : undefined,
    ],
    ['Restored from', vm.restoredFrom ? snapshotRef(vm.restoredFrom, names) : undefined],
    ['Last restore', vm.restore ? restoreText(vm.restore, names) : undefined],
    ['Created', when(vm.createdAt)],
    ['Started', when(vm.startedAt)],
    ['Updated', when(vm.updatedAt)],
    ['Metadata', meta.length ? meta.map(([k, v]) => `${k}=${v}`).join(', ') : undefined],
  ]);
}

/**
 * The `vm ls` table. A FROM column (the snapshot a VM was made from) is
 * there only when some listed VM was made from one.
 */
export function vmTable(
  vms: VmRecord[],
  now: number,
  names: SnapshotNames = new Map(),
  /** `vm ls --all-hosts`: a host column first. */
  hostOf?: (v: VmRecord) => string,
): string {
  const from = vms.some((v) => v.restoredFrom !== undefined);
  const host = hostOf !== undefined;
  return table(
    [
      ...(host ? ['host'] : []),
      'name',
      'id',
      'state',
      'vcpus',
      'memory',
      'kind',
      'image',
      ...(from ? ['from'] : []),
      'created',
    ],
    vms.map((v) => [
      ...(hostOf ? [hostOf(v)] : []),
      v.name,
      v.id,
      v.state,
      String(v.vcpus),
      mib(v.memoryMiB),
      v.kind,
      v.image ?? '-',
      ...(from ? [v.restoredFrom ? (names.get(v.restoredFrom) ?? v.restoredFrom) : '-'] : []),
      relativeTime(v.createdAt, now),
    ]),
    [...(host ? (['left'] as const) : []), 'left', 'left', 'left', 'right', 'right'],
  );
}

/**
 * The names of the snapshots these VMs were made from (one snapshot.list);
 * empty when none was, or when the list cannot be read (ids are shown then).
 */
export async function snapshotNames(c: MvirtClient, vms: VmRecord[]): Promise<SnapshotNames> {
  if (
    !vms.some(
      (v) => v.restoredFrom !== undefined || (v.restore && v.restore.snapshot !== 'suspend'),
    )
  )
    return new Map();
  try {
    const r = await c.call('snapshot.list', {});
    return new Map(r.snapshots.map((s) => [s.id, s.name]));
  } catch {
    return new Map();
  }
}

/** Follow the retained state topic and print each change while `work` runs. */
export async function withProgress<T>(
  ctx: Context,
  c: MvirtClient,
  vm: VmRecord,
  work: () => Promise<T>,
): Promise<T> {
  const t0 = ctx.io.now();
  let last: VmState | undefined = vm.state;
  const quiet = ctx.globals.json;
  const stop = await c.watchVm(vm.id, (rec) => {
    if (!rec || rec.state === last || quiet) return;
    last = rec.state;
    ctx.err(`  ${vm.name}: ${stateText(rec)} after ${duration(ctx.io.now() - t0)}\n`);
  });
  try {
    return await work();
  } finally {
    await stop();
  }
}

/**
 * While `work` runs, print the state changes of the VMs it makes (forks:
 * their ids are known only from the reply): those `isNew` accepts.
 */
export async function withNewVmProgress<T>(
  ctx: Context,
  c: MvirtClient,
  isNew: (rec: VmRecord) => boolean,
  work: () => Promise<T>,
): Promise<T> {
  if (ctx.globals.json || ctx.globals.dryRun) return work();
  const t0 = ctx.io.now();
  const last = new Map<string, VmState>();
  const stop = await c.watchVm('+', (rec) => {
    if (!rec || !isNew(rec) || last.get(rec.id) === rec.state) return;
    last.set(rec.id, rec.state);
    ctx.err(`  ${rec.name}: ${stateText(rec)} after ${duration(ctx.io.now() - t0)}\n`);
  });
  try {
    return await work();
  } finally {
    await stop();
  }
}
