/**
 * VM snapshots and suspend: `mvirt vm snapshot|suspend` save a running VM's
 * memory and device state; `mvirt snapshot ls|get|rm` manage the snapshots;
 * `mvirt vm create --from-snapshot` (fork.ts) resumes VMs from one.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { SnapshotRecord, VmRecord } from '../../protocol/rpc.js';
import { SAVABLE_VM_STATES } from '../../protocol/states.js';
import { str, type Command, type Context } from './command.js';
import { EXIT, HintedError } from './exit.js';
import { bytes, duration, json, keyValues, mib, relativeTime, table } from './output.js';
import { withProgress } from './vm-view.js';

/** Saving the memory of a large VM to disk takes a while, more so under TCG. */
const SAVE_TIMEOUT_MS = 300_000;

export function vmSnapshotTable(ss: SnapshotRecord[], now: number): string {
  return table(
    ['name', 'id', 'vm', 'image', 'size', 'vcpus', 'memory', 'machine', 'created'],
    ss.map((s) => [
      s.name,
      s.id,
      s.source.name,
      s.image,
      bytes(s.bytes),
      String(s.vcpus),
      mib(s.memoryMiB),
      s.hypervisor.machine,
      relativeTime(s.createdAt, now),
    ]),
    ['left', 'left', 'left', 'left', 'right', 'right', 'right'],
  );
}

/** One disk of a snapshot, as `snapshot get` says it. */
const diskWords = (d: NonNullable<SnapshotRecord['disks']>[number]): string =>
  d.kept === 'shared'
    ? `${d.name} (${d.volume}, ${d.format}, ${bytes(d.sizeBytes)}): read-only, shared with the forks`
    : `${d.name} (${d.volume}, ${d.format}, ${bytes(d.sizeBytes)}): copied${d.template ? `, over template ${d.template}` : ''}`;

function snapshotDetails(s: SnapshotRecord, forks: VmRecord[], now: number): string {
  return keyValues([
    ['Name', s.name],
    ['ID', s.id],
    ['State', s.state],
    ['Source VM', `${s.source.name} (${s.source.vm})`],
    ['Image', s.image],
    ['Backend', s.backend],
    ['Hypervisor', `${s.hypervisor.version}, machine ${s.hypervisor.machine}`],
    ['vCPUs', String(s.vcpus)],
    ['Memory', mib(s.memoryMiB)],
    ['Network', s.network.mode],
    ['Size', `${bytes(s.bytes)} (${s.bytes} bytes)`],
    ...(s.disks?.length ? [['Disks', s.disks.map(diskWords).join('; ')] as [string, string]] : []),
    ['Created', `${relativeTime(s.createdAt, now)} (${s.createdAt})`],
    ['Created by', s.createdBy],
    [
      'VMs from it',
      forks.length > 0 ? forks.map((v) => `${v.name} (${v.state})`).join(', ') : 'none',
    ],
  ]);
}

/**
 * A VM that cannot be saved in its state: say which states can, and how to
 * get there, instead of only "is stopped".
 */
function notSavable(err: unknown, vm: VmRecord, what: string): unknown {
  if (!(err instanceof MvirtError) || err.code !== 'VM_BAD_STATE') return err;
  // A VM that runs was refused for another reason (its disks changed): the message says which.
  if ((SAVABLE_VM_STATES as readonly string[]).includes(vm.state)) return err;
  const how =
    vm.state === 'suspended'
      ? `it is suspended already: \`mvirt vm start ${vm.name}\` resumes it`
      : `start it first (\`mvirt vm start ${vm.name}\`)`;
  return new HintedError(
    err,
    `only a VM that runs (${SAVABLE_VM_STATES.join(', ')}) can be ${what}; ${how}`,
  );
}

/** Run a save of `vm` (snapshot or suspend) with its state changes on stderr. */
async function saving<T>(
  ctx: Context,
  ref: string,
  verb: string,
  what: string,
  call: (vm: VmRecord) => Promise<T>,
): Promise<{ vm: VmRecord; r: T; ms: number }> {
  const c = await ctx.client();
  const vm = await c.call('vm.get', { vm: ref });
  const t0 = ctx.io.now();
  if (!ctx.globals.json && !ctx.globals.dryRun) ctx.err(`${verb} ${vm.name} (${vm.id})…\n`);
  try {
    const r = await withProgress(ctx, c, vm, () => call(vm));
    return { vm, r, ms: ctx.io.now() - t0 };
  } catch (err) {
    throw notSavable(err, vm, what);
  }
}

const timeout = (ctx: Context): { timeoutMs: number } => ({
  timeoutMs: ctx.globals.timeoutMs ?? SAVE_TIMEOUT_MS,
});

export const vmSaveCommands: Command[] = [
  {
    name: 'vm snapshot',
    summary: "Save a running VM's memory and device state as a snapshot; the VM goes on.",
    description:
      'The VM is paused while its state is written to the data folder, then runs on as\n' +
      'it was. Fork VMs from the snapshot with `mvirt vm create NAME --from-snapshot\n' +
      'SNAPSHOT`: they resume where the VM was instead of booting. The volumes the VM\n' +
      'may write are copied while it is paused; each fork gets its own copies, and\n' +
      'the read-only ones are shared.',
    args: ['VM', 'NAME'],
    examples: [
      'mvirt vm snapshot web-1 warm',
      'mvirt vm create worker --from-snapshot warm --count 4 --wait',
    ],
    run: async (ctx, p) => {
      const [ref, name] = p.positionals;
      const c = await ctx.client();
      const { vm, r, ms } = await saving(ctx, ref!, 'saving the state of', 'snapshotted', (v) =>
        c.call('vm.snapshot', { vm: v.id, name: name! }, timeout(ctx)),
      );
      ctx.out(
        ctx.globals.json
          ? json(r)
          : `snapshot ${r.name} (${r.id}) of ${vm.name}: ${bytes(r.bytes)} saved in ${duration(ms)}\n` +
              `fork it with \`mvirt vm create NAME --from-snapshot ${r.name}\`\n`,
      );
      return EXIT.OK;
    },
  },
  {
    name: 'vm suspend',
    summary: "Save a running VM's state to disk and end its process; `vm start` resumes it.",
    description:
      'The VM becomes `suspended`: it holds no CPU or memory, and `mvirt vm start`\n' +
      'resumes it where it was, without booting. `mvirt vm stop` drops the saved state\n' +
      '(the next start boots afresh); `mvirt vm rm` deletes the VM with it.',
    args: ['VM'],
    examples: ['mvirt vm suspend web-1', 'mvirt vm start web-1'],
    run: async (ctx, p) => {
      const [ref] = p.positionals;
      const c = await ctx.client();
      const { r, ms } = await saving(ctx, ref!, 'suspending', 'suspended', (v) =>
        c.call('vm.suspend', { vm: v.id }, timeout(ctx)),
      );
      ctx.out(
        ctx.globals.json
          ? json(r)
          : `${r.name} (${r.id}) is suspended after ${duration(ms)}; \`mvirt vm start ${r.name}\` resumes it\n`,
      );
      return EXIT.OK;
    },
  },
];

export const snapshotCommands: Command[] = [
  {
    name: 'snapshot ls',
    summary: 'List VM snapshots (saved memory and device state), oldest first.',
    options: {
      vm: { type: 'string', value: 'VM', help: 'only the snapshots of this VM (id or name)' },
    },
    examples: ['mvirt snapshot ls', 'mvirt snapshot ls --vm web-1 --json'],
    run: async (ctx, p) => {
      const vm = str(p, 'vm');
      const c = await ctx.client();
      const r = await c.call('snapshot.list', vm !== undefined ? { vm } : {});
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.snapshots.length === 0)
        ctx.out(
          vm !== undefined
            ? `no snapshots of VM ${vm}\n`
            : 'no VM snapshots yet: take one of a running VM with `mvirt vm snapshot VM NAME`\n',
        );
      else ctx.out(vmSnapshotTable(r.snapshots, ctx.io.now()));
      return EXIT.OK;
    },
  },
  {
    name: 'snapshot get',
    summary: 'Show one VM snapshot and the VMs made from it.',
    args: ['SNAPSHOT'],
    examples: ['mvirt snapshot get warm', 'mvirt snapshot get snap-0123456789ab --json'],
    run: async (ctx, p) => {
      const c = await ctx.client();
      const s = await c.call('snapshot.get', { snapshot: p.positionals[0]! });
      if (ctx.globals.json) ctx.out(json(s));
      else {
        const forks = (await c.call('vm.list', {})).vms.filter((v) => v.restoredFrom === s.id);
        ctx.out(snapshotDetails(s, forks, ctx.io.now()));
      }
      return EXIT.OK;
    },
  },
  {
    name: 'snapshot rm',
    summary: 'Delete a VM snapshot and its files.',
    description:
      'Refused (SNAPSHOT_IN_USE) while VMs made from it have not started yet (they\n' +
      'resume from its files at their first start), or while a pool makes its VMs from\n' +
      'it (`mvirt pool set --from-snapshot`). VMs that have started keep running.',
    args: ['SNAPSHOT'],
    examples: ['mvirt snapshot rm warm'],
    run: async (ctx, p) => {
      const ref = p.positionals[0]!;
      const c = await ctx.client();
      await c.call('snapshot.delete', { snapshot: ref });
      ctx.out(ctx.globals.json ? json({}) : `deleted snapshot ${ref}\n`);
      return EXIT.OK;
    },
  },
];
