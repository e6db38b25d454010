/** `mvirt vm …`: the VM lifecycle methods of docs/protocol.md. */
import { parseLabels } from './hosts.js';
import { readFileSync } from 'node:fs';
import type { MvirtClient } from '../../protocol/client.js';
import { MvirtError } from '../../protocol/errors.js';
import type { VmRecord, VmState } from '../../protocol/rpc.js';
import { NETWORK_MODES, VM_KINDS, VM_STATES } from '../../protocol/states.js';
import { UsageError, integer, oneOf } from './args.js';
import { secondsMs, str, type Command, type Context } from './command.js';
import { EXIT, HintedError } from './exit.js';
import { inert } from '../../protocol/inert.js';
import { createFromSnapshot, FORK_OPTIONS, wantsFork } from './fork.js';
import { byName, bytes, duration, json, mib, table } from './output.js';
import { snapshotNames, vmDetails, vmLine, vmTable, withProgress } from './vm-view.js';

/** Waiting for a boot under TCG on a loaded 2-core machine takes a while. */
const START_TIMEOUT_MS = 300_000;
const STOP_MARGIN_MS = 60_000;

function parseMeta(items: string[]): Record<string, string> | undefined {
  if (items.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const kv of items) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`--meta wants KEY=VALUE, got '${kv}'`, 'vm create');
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

const print = (ctx: Context, vm: VmRecord): number => {
  ctx.out(ctx.globals.json ? json(vm) : vmLine(vm));
  return EXIT.OK;
};

/** `--disk VOL[:ro]` → vm.create's disks (undefined when none). */
export function parseDisks(specs: string[]): { volume: string; readOnly?: boolean }[] | undefined {
  if (specs.length === 0) return undefined;
  return specs.map((s) => {
    const m = /^([^:]+)(?::(ro|rw))?$/.exec(s);
    if (!m) throw new UsageError(`--disk ${s}: expected VOLUME or VOLUME:ro`);
    return m[2] === 'ro' ? { volume: m[1]!, readOnly: true } : { volume: m[1]! };
  });
}

/** A one-VM action with no options: pause, resume, reboot, kill. */
function simple(
  method: 'vm.pause' | 'vm.resume' | 'vm.reboot' | 'vm.kill',
  summary: string,
  example: string,
): Command {
  const word = method.slice(3);
  return {
    name: `vm ${word}`,
    summary,
    args: ['VM'],
    examples: [example],
    run: async (ctx, p) => {
      const [vm] = p.positionals;
      const c = await ctx.client();
      try {
        return print(ctx, await c.call(method, { vm: vm! }));
      } catch (err) {
        throw method === 'vm.resume' ? await suspendedHint(c, err, vm!) : err;
      }
    },
  };
}

/** `vm resume` of a suspended VM: that is `vm start`'s work. */
async function suspendedHint(c: MvirtClient, err: unknown, ref: string): Promise<unknown> {
  if (!(err instanceof MvirtError) || err.code !== 'VM_BAD_STATE') return err;
  const vm = await c.call('vm.get', { vm: ref }).catch(() => undefined);
  return vm?.state === 'suspended'
    ? new HintedError(err, `a suspended VM resumes with \`mvirt vm start ${vm.name}\``)
    : err;
}

/**
 * A cloud-init document from a file (`-` = stdin is not offered: the CLI may
 * be interactive). Read with node:fs, which every Node has loaded at start:
 * node:fs/promises, loaded with this module, was 1.6 ms of every `mvirt vm …`
 * (2-core dev machine, Node 20).
 */
async function readDoc(file: string | undefined, option: string): Promise<string | undefined> {
  if (file === undefined) return undefined;
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${option} ${file}: ${(err as Error).message}`);
  }
}

const commands: Command[] = [
  {
    name: 'vm create',
    summary: 'Define a VM (it stays stopped until `mvirt vm start`), or fork VMs from a snapshot.',
    args: ['NAME'],
    description:
      'With --from-snapshot the VMs resume from a VM snapshot (`mvirt vm snapshot`)\n' +
      'instead of booting, and start at once: image, size, backend, network and\n' +
      "disks are the snapshot's, so --image, --vcpus, --memory, --network, --backend,\n" +
      '--disk and the cloud-init options do not go with it. Each fork gets its own\n' +
      'id, name, address and identity; its agent steps the clock and adds entropy.',
    options: {
      image: { type: 'string', value: 'IMAGE', help: 'image name (default: the host default)' },
      vcpus: { type: 'string', value: 'N', help: 'virtual CPUs' },
      memory: { type: 'string', value: 'MiB', help: 'memory in MiB' },
      kind: {
        type: 'string',
        value: 'KIND',
        help: 'service (kept) or ephemeral (destroyed after its job)',
      },
      network: {
        type: 'string',
        value: 'MODE',
        help: 'none, user or bridge (default: the host default)',
      },
      'agent-over-network': {
        type: 'boolean',
        help: 'bridge: the agent dials the host over the network with a per-boot token',
      },
      'user-data': { type: 'string', value: 'FILE', help: 'cloud-init user-data (NoCloud seed)' },
      'meta-data': { type: 'string', value: 'FILE', help: 'cloud-init meta-data' },
      'network-config': { type: 'string', value: 'FILE', help: 'cloud-init network-config (v2)' },
      backend: {
        type: 'string',
        value: 'NAME',
        help: 'hypervisor backend (default: the host default)',
      },
      meta: { type: 'string', multiple: true, value: 'K=V', help: 'metadata, repeatable' },
      disk: {
        type: 'string',
        multiple: true,
        value: 'VOL[:ro]',
        help: 'attach a volume at every boot, in order (`:ro` read-only), repeatable',
      },
      ...FORK_OPTIONS,
      fleet: {
        type: 'boolean',
        help: 'create it on a host of the fleet: the first online host with room, the image and every --label that claims it (docs/fleet.md)',
      },
      label: {
        type: 'string',
        multiple: true,
        value: 'K=V',
        help: 'with --fleet: only a host with this label (mvirtd --label K=V), repeatable',
      },
    },
    examples: [
      'mvirt vm create web-1',
      'mvirt --broker mqtts://fleet.example:8884 vm create gpu-1 --fleet --label gpu=true',
      'mvirt vm create worker --from-snapshot warm --count 4 --wait',
      'mvirt vm create db-1 --disk pgdata --disk seed-data:ro',
      'mvirt vm create web-2 --vcpus 2 --memory 512 --network user --meta team=blue',
      'mvirt vm create web-3 --network bridge --user-data ./cloud-config.yaml',
    ],
    run: async (ctx, p) => {
      const [name] = p.positionals;
      const fleet = p.values.fleet === true;
      const labels = (p.values.label as string[] | undefined) ?? [];
      if (labels.length > 0 && !fleet)
        throw new UsageError('--label chooses a host of the fleet: use it with --fleet');
      if (fleet && wantsFork(p))
        throw new UsageError(
          "--fleet places a new VM: a snapshot is one host's, not with --from-snapshot",
        );
      if (wantsFork(p))
        return createFromSnapshot(ctx, p, {
          name: name!,
          kind: oneOf(str(p, 'kind'), VM_KINDS, '--kind'),
          metadata: parseMeta((p.values.meta as string[] | undefined) ?? []),
        });
      const network = oneOf(str(p, 'network'), NETWORK_MODES, '--network');
      const overNet = p.values['agent-over-network'] === true;
      if (overNet && network !== 'bridge')
        throw new UsageError('--agent-over-network needs --network bridge');
      const params = {
        name: name!,
        image: str(p, 'image'),
        vcpus: integer(str(p, 'vcpus'), '--vcpus'),
        memoryMiB: integer(str(p, 'memory'), '--memory'),
        kind: oneOf(str(p, 'kind'), VM_KINDS, '--kind'),
        backend: str(p, 'backend'),
        network: network
          ? { mode: network, ...(overNet ? { agentOverNetwork: true } : {}) }
          : undefined,
        metadata: parseMeta((p.values.meta as string[] | undefined) ?? []),
        userData: await readDoc(str(p, 'user-data'), '--user-data'),
        metaData: await readDoc(str(p, 'meta-data'), '--meta-data'),
        networkConfig: await readDoc(str(p, 'network-config'), '--network-config'),
        disks: parseDisks((p.values.disk as string[] | undefined) ?? []),
      };
      const given = Object.fromEntries(
        Object.entries(params).filter(([, v]) => v !== undefined),
      ) as typeof params;
      let vm;
      if (fleet) {
        const placed = await (
          await ctx.fleet()
        ).request('vm.create', given, { need: { labels: parseLabels(labels, 'vm create') } });
        ctx.err(`mvirt: created on ${placed.hostId}\n`);
        vm = placed.result;
      } else vm = await (await ctx.client()).call('vm.create', given);
      if (ctx.globals.json) ctx.out(json(vm));
      else
        ctx.out(
          `created ${vm.name} (${vm.id}): ${vm.vcpus} vCPU, ${mib(vm.memoryMiB)}, ${vm.state}\n`,
        );
      return EXIT.OK;
    },
  },
  {
    name: 'vm ls',
    summary: 'List VMs.',
    options: {
      state: {
        type: 'string',
        value: 'STATE',
        help: `only VMs in this state (${VM_STATES.join(', ')})`,
      },
      'all-hosts': {
        type: 'boolean',
        help: 'the VMs of every online host on the broker (a fleet: docs/fleet.md), with a host column',
      },
    },
    examples: ['mvirt vm ls', 'mvirt vm ls --state ready --json', 'mvirt vm ls --all-hosts'],
    run: async (ctx, p) => {
      const state = oneOf(str(p, 'state'), VM_STATES, '--state');
      const params = state ? { state } : {};
      if (p.values['all-hosts'] === true) return listAllHosts(ctx, params);
      const c = await ctx.client();
      const r = await c.call('vm.list', params);
      if (ctx.globals.json) ctx.out(json(r));
      else if (r.vms.length === 0)
        ctx.out(
          state ? `no VMs are ${state}\n` : 'no VMs yet: create one with `mvirt vm create NAME`\n',
        );
      else {
        const vms = [...r.vms].sort((a, b) => byName(a.name, b.name));
        ctx.out(vmTable(vms, ctx.io.now(), await snapshotNames(c, vms)));
      }
      return EXIT.OK;
    },
  },
  {
    name: 'vm get',
    summary: 'Show one VM.',
    args: ['VM'],
    examples: ['mvirt vm get web-1', 'mvirt vm get web-1 --json'],
    run: async (ctx, p) => {
      const [vm] = p.positionals;
      const c = await ctx.client();
      const r = await c.call('vm.get', { vm: vm! });
      ctx.out(ctx.globals.json ? json(r) : vmDetails(r, ctx.io.now(), await snapshotNames(c, [r])));
      return EXIT.OK;
    },
  },
  {
    name: 'vm disks',
    summary: "List a running VM's block devices as its guest sees them now.",
    description:
      "Asked of the guest's agent: each disk's name, serial (a volume's id for volumes), size, whether it is read-only, where it is mounted and how full that file system is.",
    args: ['VM'],
    examples: ['mvirt vm disks web-1', 'mvirt vm disks web-1 --json'],
    run: async (ctx, p) => {
      const [vm] = p.positionals;
      const c = await ctx.client();
      const r = await c.call('vm.blockDevices', { vm: vm! });
      if (ctx.globals.json) ctx.out(json(r));
      else
        ctx.out(
          table(
            ['name', 'serial', 'size', 'ro', 'mount', 'used'],
            r.blockDevices.map((d) => [
              d.name,
              d.serial ?? '-',
              bytes(d.sizeBytes),
              d.readOnly ? 'yes' : 'no',
              d.mount ?? '-',
              d.totalBytes !== undefined && d.usedBytes !== undefined
                ? `${bytes(d.usedBytes)} of ${bytes(d.totalBytes)}`
                : '-',
            ]),
            ['left', 'left', 'right'],
          ),
        );
      return EXIT.OK;
    },
  },
  {
    name: 'vm start',
    summary: 'Boot a VM (or resume a suspended one) and wait until its agent is ready.',
    description:
      'Prints each state change on stderr. A suspended VM (`mvirt vm suspend`) resumes\n' +
      'from its saved state instead of booting.',
    args: ['VM'],
    options: {
      'no-wait': { type: 'boolean', help: 'return as soon as the boot has begun' },
    },
    examples: ['mvirt vm start web-1', 'mvirt vm start web-1 --no-wait'],
    run: async (ctx, p) => {
      const [ref] = p.positionals;
      const c = await ctx.client();
      if (p.values['no-wait'] === true) return print(ctx, await c.call('vm.start', { vm: ref! }));
      const vm = await c.call('vm.get', { vm: ref! });
      const t0 = ctx.io.now();
      if (!ctx.globals.json && !ctx.globals.dryRun)
        ctx.err(
          vm.state === 'suspended'
            ? `resuming ${vm.name} (${vm.id}) from its suspended state…\n`
            : `starting ${vm.name} (${vm.id})…\n`,
        );
      const r = await withProgress(ctx, c, vm, () =>
        c.call(
          'vm.start',
          { vm: vm.id, wait: true },
          { timeoutMs: ctx.globals.timeoutMs ?? START_TIMEOUT_MS },
        ),
      );
      if (ctx.globals.json) ctx.out(json(r));
      else ctx.out(`${r.name} (${r.id}) is ${r.state} after ${duration(ctx.io.now() - t0)}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'vm stop',
    summary: 'Stop a VM gracefully (agent or ACPI shutdown), forcing it after a timeout.',
    description:
      'A suspended VM has no process to stop: its saved state is dropped and its next\n' +
      'start boots afresh.',
    args: ['VM'],
    options: {
      timeout: {
        type: 'string',
        value: 'S',
        help: 'seconds of graceful shutdown before forcing (the reply wait grows with it)',
      },
    },
    examples: ['mvirt vm stop web-1', 'mvirt vm stop web-1 --timeout 5'],
    run: async (ctx, p) => {
      const [vm] = p.positionals;
      const stopMs = secondsMs(p, 'timeout');
      const c = await ctx.client();
      const r = await c.call(
        'vm.stop',
        stopMs === undefined ? { vm: vm! } : { vm: vm!, timeoutMs: stopMs },
        // --timeout here is the daemon's graceful timeout; wait for the reply beyond it.
        { timeoutMs: (stopMs ?? 60_000) + STOP_MARGIN_MS },
      );
      return print(ctx, r);
    },
  },
  simple(
    'vm.kill',
    'Stop a VM at once (SIGKILL of its hypervisor process).',
    'mvirt vm kill web-1',
  ),
  simple('vm.pause', 'Pause a running VM (its vCPUs stop; memory stays).', 'mvirt vm pause web-1'),
  simple('vm.resume', 'Resume a paused VM.', 'mvirt vm resume web-1'),
  simple('vm.reboot', 'Reboot a VM.', 'mvirt vm reboot web-1'),
  {
    name: 'vm attach',
    summary:
      'Attach a volume: hot-plugged into a running VM, or recorded for the next boot of a stopped one.',
    args: ['VM', 'VOLUME'],
    options: { ro: { type: 'boolean', help: 'read-only (the only way to share a volume)' } },
    examples: ['mvirt vm attach web-1 pgdata', 'mvirt vm attach web-2 seed-data --ro'],
    run: async (ctx, p) => {
      const [vm, volume] = p.positionals;
      const c = await ctx.client();
      const r = await c.call('vm.attachDisk', {
        vm: vm!,
        volume: volume!,
        ...(p.values.ro === true ? { readOnly: true } : {}),
      });
      ctx.out(ctx.globals.json ? json(r) : `${inert(`attached ${volume!} to ${r.name}`)}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'vm detach',
    summary: 'Detach a volume; on a running VM, once the guest has released the disk.',
    args: ['VM', 'VOLUME'],
    options: {
      timeout: {
        type: 'string',
        value: 'S',
        help: 'seconds to wait for the guest to release the disk (default 30; then DISK_BUSY)',
      },
    },
    examples: ['mvirt vm detach web-1 pgdata', 'mvirt vm detach web-1 pgdata --timeout 60'],
    run: async (ctx, p) => {
      const [vm, volume] = p.positionals;
      const ms = secondsMs(p, 'timeout');
      const c = await ctx.client();
      const r = await c.call(
        'vm.detachDisk',
        { vm: vm!, volume: volume!, ...(ms === undefined ? {} : { timeoutMs: ms }) },
        { timeoutMs: (ms ?? 30_000) + STOP_MARGIN_MS },
      );
      ctx.out(ctx.globals.json ? json(r) : `${inert(`detached ${volume!} from ${r.name}`)}\n`);
      return EXIT.OK;
    },
  },
  {
    name: 'vm rm',
    summary: 'Delete a stopped, failed or suspended VM and its folder.',
    args: ['VM'],
    options: { force: { type: 'boolean', short: 'f', help: 'kill the VM first if it runs' } },
    examples: ['mvirt vm rm web-1', 'mvirt vm rm -f web-1'],
    run: async (ctx, p) => {
      const [vm] = p.positionals;
      const c = await ctx.client();
      try {
        await c.call('vm.delete', { vm: vm! });
      } catch (err) {
        if (!(p.values.force === true && err instanceof MvirtError && err.code === 'VM_RUNNING'))
          throw err;
        await c.call('vm.kill', { vm: vm! });
        await c.call('vm.delete', { vm: vm! });
      }
      ctx.out(ctx.globals.json ? json({}) : `deleted ${vm!}\n`);
      return EXIT.OK;
    },
  },
];

export const vmCommands = commands;

/**
 * `vm ls --all-hosts`: vm.list on every online host, one after the other. A
 * host that does not answer is named on stderr and the exit code says so.
 */
async function listAllHosts(ctx: Context, params: { state?: VmState }): Promise<number> {
  const hosts = (await ctx.hosts()).filter((h) => h.online);
  const listed: { hostId: string; vms: VmRecord[] }[] = [];
  const failed: { hostId: string; error: string }[] = [];
  for (const h of hosts) {
    try {
      const c = await ctx.clientOf(h.hostId);
      listed.push({ hostId: h.hostId, vms: (await c.call('vm.list', params)).vms });
    } catch (err) {
      failed.push({ hostId: h.hostId, error: (err as Error).message });
      ctx.err(`${h.hostId}: ${(err as Error).message}\n`);
    }
  }
  if (ctx.globals.json) ctx.out(json({ hosts: listed, failed }));
  else {
    const host = new Map<VmRecord, string>();
    for (const l of listed) for (const v of l.vms) host.set(v, l.hostId);
    const vms = [...host.keys()].sort(
      (a, b) => host.get(a)!.localeCompare(host.get(b)!) || a.name.localeCompare(b.name),
    );
    ctx.out(
      vms.length === 0
        ? `no VMs on ${hosts.length} online host${hosts.length === 1 ? '' : 's'}\n`
        : vmTable(vms, ctx.io.now(), new Map(), (v) => host.get(v)!),
    );
  }
  return failed.length > 0 ? EXIT.CONNECTION : EXIT.OK;
}
