/**
 * `mvirt vm create NAME --from-snapshot S [--count N] [--wait]`: VMs that
 * resume from a VM snapshot instead of booting (vm.create {fromSnapshot}).
 * Everything the snapshot fixes (image, size, backend, network, disks,
 * cloud-init) is refused here by name, before anything is sent.
 */
import { MvirtError } from '../../protocol/errors.js';
import { MAX_FORKS } from '../../protocol/limits.js';
import type { ParamsOf, VmRecord } from '../../protocol/rpc.js';
import { UsageError, type OptionSpec, type Parsed } from './args.js';
import { str, type Context } from './command.js';
import { EXIT, HintedError } from './exit.js';
import { duration, json, mib } from './output.js';
import { withNewVmProgress } from './vm-view.js';

/** Reply wait for forks: their starts (and with --wait their agents) are in the call. */
const FORK_TIMEOUT_MS = 300_000;

export const FORK_OPTIONS = {
  'from-snapshot': {
    type: 'string',
    value: 'SNAPSHOT',
    help: 'resume from this VM snapshot (id or name) instead of booting; the VM starts at once',
  },
  count: {
    type: 'string',
    value: 'N',
    help: `with --from-snapshot: make N VMs (1–${MAX_FORKS}), named NAME-1 … NAME-N`,
  },
  wait: { type: 'boolean', help: 'with --from-snapshot: return once every VM is ready' },
} as const satisfies Record<string, OptionSpec>;

/** The `vm create` options a snapshot decides (the flag as typed). */
const FIXED_BY_SNAPSHOT = [
  'image',
  'vcpus',
  'memory',
  'network',
  'agent-over-network',
  'backend',
  'disk',
  'user-data',
  'meta-data',
  'network-config',
] as const;

/** Does this `vm create` ask for forks (any of their options)? */
export const wantsFork = (p: Parsed): boolean =>
  p.values['from-snapshot'] !== undefined ||
  p.values.count !== undefined ||
  p.values.wait !== undefined;

const given = (p: Parsed, k: string): boolean => {
  const v = p.values[k];
  return Array.isArray(v) ? v.length > 0 : v !== undefined && v !== false;
};

function forkParams(
  p: Parsed,
  base: { name: string; kind?: 'service' | 'ephemeral'; metadata?: Record<string, string> },
): ParamsOf<'vm.create'> {
  const from = str(p, 'from-snapshot');
  if (from === undefined) {
    const opt = p.values.count !== undefined ? '--count' : '--wait';
    throw new UsageError(
      `${opt} goes with --from-snapshot (forks of a VM snapshot); a plain \`vm create\` makes one stopped VM`,
      'vm create',
    );
  }
  const clash = FIXED_BY_SNAPSHOT.filter((k) => given(p, k)).map((k) => `--${k}`);
  if (clash.length > 0)
    throw new UsageError(
      `${clash.join(', ')} cannot go with --from-snapshot: a VM made from a snapshot has the snapshot's image, size, backend, network and disks (\`mvirt snapshot get ${from}\` shows them)`,
      'vm create',
    );
  const n = str(p, 'count');
  const count = n === undefined ? undefined : Number(n);
  if (count !== undefined && !(/^\d+$/.test(n!) && count >= 1 && count <= MAX_FORKS))
    throw new UsageError(
      `--count wants a whole number from 1 to ${MAX_FORKS}, got '${n!}'`,
      'vm create',
    );
  return {
    name: base.name,
    fromSnapshot: from,
    ...(count !== undefined ? { count } : {}),
    ...(p.values.wait === true ? { wait: true } : {}),
    ...(base.kind !== undefined ? { kind: base.kind } : {}),
    ...(base.metadata !== undefined ? { metadata: base.metadata } : {}),
  };
}

/** The names vm.create gives the forks (protocol/rpc.ts `count`). */
export const forkNames = (name: string, count = 1): string[] =>
  count === 1 ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);

/** Errors of the checks made before any VM is created: nothing was left behind. */
const BEFORE_CREATE = new Set([
  'SNAPSHOT_NOT_FOUND',
  'VM_EXISTS',
  'CAPACITY_EXCEEDED',
  'INVALID_PARAMS',
  'INVALID_NAME',
  'FORBIDDEN',
  'NOT_AUTHORIZED',
  'CONNECTION_FAILED',
]);

export async function createFromSnapshot(
  ctx: Context,
  p: Parsed,
  base: { name: string; kind?: 'service' | 'ephemeral'; metadata?: Record<string, string> },
): Promise<number> {
  const params = forkParams(p, base);
  const names = forkNames(base.name, params.count);
  const c = await ctx.client();
  // Its id tells this command's forks from other VMs' retained states.
  const snap = await c.call('snapshot.get', { snapshot: params.fromSnapshot! });
  const mine = (v: VmRecord): boolean => names.includes(v.name) && v.restoredFrom === snap.id;
  const t0 = ctx.io.now();
  if (!ctx.globals.json && !ctx.globals.dryRun)
    ctx.err(
      `resuming ${names.length === 1 ? names[0]! : `${names.length} VMs (${names[0]!} … ${names.at(-1)!})`} from snapshot ${snap.name} (${snap.id})…\n`,
    );
  let r;
  try {
    r = await withNewVmProgress(ctx, c, mine, () =>
      c.call('vm.create', params, { timeoutMs: ctx.globals.timeoutMs ?? FORK_TIMEOUT_MS }),
    );
  } catch (err) {
    if (!(err instanceof MvirtError) || BEFORE_CREATE.has(err.code)) throw err;
    throw await leftBehind(ctx, err, mine);
  }
  if (ctx.globals.json) {
    ctx.out(json(r));
    return EXIT.OK;
  }
  const took = ` after ${duration(ctx.io.now() - t0)}`;
  for (const vm of [r, ...(r.forks ?? [])])
    ctx.out(
      `created ${vm.name} (${vm.id}) from snapshot ${snap.name}: ${vm.vcpus} vCPU, ${mib(vm.memoryMiB)}, ${vm.state}${vm.state === 'ready' ? took : ''}\n`,
    );
  return EXIT.OK;
}

/** The error, with a hint naming the forks it left (created, but failed or not started). */
async function leftBehind(
  ctx: Context,
  err: MvirtError,
  mine: (v: VmRecord) => boolean,
): Promise<MvirtError> {
  try {
    const c = await ctx.client();
    const left = (await c.call('vm.list', {})).vms.filter(mine);
    if (left.length === 0) return err;
    return new HintedError(
      err,
      `these VMs were made from the snapshot before it failed: ${left.map((v) => `${v.name} (${v.state})`).join(', ')}; remove each with \`mvirt vm rm -f NAME\``,
    );
  } catch {
    return err;
  }
}
