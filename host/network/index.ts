/**
 * VM networking as the VM manager sees it: which modes this host offers, an
 * address and MAC per bridged VM (SQLite leases), a TAP per running bridged
 * VM, the per-boot seed disk (cloud-init NoCloud + the agent's token) and
 * the kernel arguments from which the µOS configures its interface.
 *
 * Firewall stance: mvirt filters nothing between guests on one bridge, nor
 * between guests and the host's bridge address (services the host binds to
 * 0.0.0.0 are reachable from guests). With --nat, guests reach beyond the host
 * through an nftables masquerade; without it they reach only the bridge.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { CMDLINE_KEYS, type Channel } from '../../protocol/agent.js';
import { MvirtError } from '../../protocol/errors.js';
import type { NetworkMode, NetworkSpec, VmRecord } from '../../protocol/rpc.js';
import type { DiskSpec, LaunchSpec } from '../hypervisors/types.js';
import type { MvirtLogger } from '../log.js';
import type { NetworkRepo, SeedDocs } from '../store/network.js';
import { tapArgv, type NetDevices } from './iproute.js';
import { NET_SOCKET, PASST_NET, passtInstalled, type Passt } from './passt.js';
import { SEED_FILE, writeSeed } from './seed.js';
import { macFor, pickFree, tapFor, type Subnet } from './subnet.js';
import type { AgentTokens } from './tokens.js';

/**
 * User-mode networking's fixed addresses (slirp's defaults, kept with passt).
 * The gateway is not the host: passt runs with --no-map-gw (passt.ts).
 */
export const USER_NET = {
  ip: `${PASST_NET.ip}/${PASST_NET.prefix}`,
  gw: PASST_NET.gw,
  dns: PASST_NET.dns,
} as const;

export interface NetworkOptions {
  /** The mode of a VM created without `network`. */
  defaultMode: NetworkMode;
  /** The bridge, or null when bridge networking is off (not root, or --bridge off). */
  bridge: string | null;
  subnet: Subnet;
  nat: boolean;
  /** Port of the broker's guest listener on the bridge address. */
  guestPort: number;
  /** DNS server handed to bridged guests, if any. */
  dns: string | null;
  /** `<data-dir>/vm`: passt's state lives in each VM's folder. */
  vmDir?: string;
}

/** What one boot gets from the network: NIC, extra disks and kernel arguments. */
export interface BootNetwork {
  nic: LaunchSpec['network'];
  disks: DiskSpec[];
  cmdline: Record<string, string>;
  /** Set when the agent dials over the network instead of the hypervisor's channel. */
  channel?: Channel;
  /** That agent's per-boot token (also on the seed disk), for a restored guest's identity. */
  token?: string;
}

export interface NetworkPlan {
  boot: BootNetwork;
  commands: string[][];
  files: string[];
}

/** prepare()'s side effects: done for real, or noted for a dry run (plan()). */
interface Effects {
  startPasst(vmId: string, dir: string): Promise<string>;
  allocate(vmId: string): { ip: string; mac: string };
  createTap(vmId: string, tap: string, bridge: string): Promise<void>;
  token(vmId: string): string;
  writeSeed(dir: string, input: Parameters<typeof writeSeed>[1]): Promise<string>;
  removeSeed(dir: string): Promise<void>;
}

export interface Network {
  readonly options: NetworkOptions;
  /** `host:port` of the guest listener (bridge on), for the broker. */
  readonly guestListen: string | null;
  /**
   * Bridge and NAT; call before the broker opens the guest listener. With
   * `optional` (the bridge was a default, not asked for) a host that cannot
   * make it (no CAP_NET_ADMIN in a container, no iproute2) falls back to
   * user-mode networking with a warning instead of refusing to start.
   */
  setup(opts?: { optional: boolean }): Promise<void>;
  /** vm.create: the VM's effective spec; NETWORK_UNAVAILABLE when this host cannot do it. */
  resolve(spec: NetworkSpec | undefined): NetworkSpec;
  /** vm.create, inside its transaction: the lease (bridge) and the seed documents. */
  define(vmId: string, spec: NetworkSpec, docs: SeedDocs): void;
  /** Boot step: TAP, token and seed disk. Undo with release(). */
  prepare(vm: VmRecord, dir: string): Promise<BootNetwork>;
  /**
   * prepare()'s dry run: the same checks and the same BootNetwork (a token and
   * a lease not yet issued are placeholders), the processes and files it would
   * make; nothing started, allocated or written.
   */
  plan(vm: VmRecord, dir: string): Promise<NetworkPlan>;
  /** Once the runtime row exists: keep this boot's token across a daemon restart. */
  persist(vmId: string): void;
  /** The boot ended: remove the TAP, revoke the token. Idempotent. */
  release(vmId: string): Promise<void>;
  verifyToken(vmId: string, token: string): boolean;
  /** After recovery: tokens of re-attached VMs back, stale TAPs of the rest removed. */
  recovered(running: ReadonlySet<string>): Promise<void>;
}

export function createNetwork(deps: {
  repo: NetworkRepo;
  devices: NetDevices;
  tokens: AgentTokens;
  options: NetworkOptions;
  /** User-mode networking; null: passt is not used (slirp with restrict=on). */
  passt?: Passt | null;
  log: MvirtLogger;
}): Network {
  const { repo, devices, tokens } = deps;
  let passt = deps.passt ?? null;
  const options = { ...deps.options };
  const log = deps.log.child({ component: 'network' });
  let bridge = options.bridge;
  let guestListen = bridge ? `${options.subnet.hostIp}:${options.guestPort}` : null;
  /** VMs whose TAP exists (made at boot, or found alive by recovery): only those are removed. */
  const withTap = new Set<string>();
  const bridgeOff = (): MvirtError =>
    new MvirtError(
      'NETWORK_UNAVAILABLE',
      'bridge networking is off on this host: mvirtd must run as root without --bridge off; use network mode user or none',
      { details: { mode: 'bridge' } },
    );
  const allocate = (vmId: string) =>
    repo.allocate(vmId, macFor(vmId), (taken) => pickFree(options.subnet, taken));

  const real: Effects = {
    startPasst: (vmId, dir) => passt!.start(vmId, dir),
    allocate,
    async createTap(vmId, tap, br) {
      await devices.createTap(tap, br);
      withTap.add(vmId);
    },
    token: (vmId) => tokens.issue(vmId),
    writeSeed: (dir, input) => writeSeed(dir, input),
    removeSeed: (dir) => rm(path.join(dir, SEED_FILE), { force: true }),
  };

  /** The one boot-time path, for real (prepare) or as a plan (plan). */
  async function bootNetwork(vm: VmRecord, dir: string, fx: Effects): Promise<BootNetwork> {
    const spec = vm.network;
    const out: BootNetwork = { nic: { mode: spec.mode }, disks: [], cmdline: {} };
    if (spec.mode === 'user') {
      out.nic.mac = macFor(vm.id);
      // passt listens before QEMU starts; release() stops it if the boot fails later.
      if (passt) out.nic.socket = await fx.startPasst(vm.id, dir);
      Object.assign(out.cmdline, {
        [CMDLINE_KEYS.ip]: USER_NET.ip,
        [CMDLINE_KEYS.gw]: USER_NET.gw,
        [CMDLINE_KEYS.dns]: USER_NET.dns,
      });
    } else if (spec.mode === 'bridge') {
      if (!bridge) throw bridgeOff();
      // The record carries its lease (joined by the store); allocate only if it has none.
      const lease = vm.ip && vm.mac ? { ip: vm.ip, mac: vm.mac } : fx.allocate(vm.id);
      const tap = tapFor(vm.id);
      await fx.createTap(vm.id, tap, bridge);
      out.nic = { mode: 'bridge', tap, mac: lease.mac };
      out.cmdline[CMDLINE_KEYS.ip] = `${lease.ip}/${options.subnet.prefix}`;
      out.cmdline[CMDLINE_KEYS.gw] = options.subnet.hostIp;
      if (options.dns) out.cmdline[CMDLINE_KEYS.dns] = options.dns;
      if (spec.agentOverNetwork) {
        out.channel = 'tcp';
        out.cmdline[CMDLINE_KEYS.addr] = guestListen!;
      }
    }
    const docs = vm.cloudInit ? repo.seed(vm.id) : undefined;
    const token = out.channel === 'tcp' ? fx.token(vm.id) : undefined;
    if (token !== undefined) out.token = token;
    if (docs || token !== undefined) {
      const iso = await fx.writeSeed(dir, {
        vmId: vm.id,
        hostname: vm.name,
        docs: docs ?? {},
        ...(token !== undefined ? { token } : {}),
      });
      out.disks.push({ path: iso, readOnly: true });
    } else {
      await fx.removeSeed(dir);
    }
    return out;
  }

  return {
    options,
    get guestListen() {
      return guestListen;
    },

    async setup(o = { optional: false }) {
      if (passt && !(await passtInstalled())) {
        passt = null;
        log.warn(
          'passt is not installed: user-mode VMs get no network access at all (slirp restricted, since plain slirp would let guests reach the host loopback); apt-get install passt',
        );
      }
      if (!bridge) return;
      try {
        await devices.ensureBridge(bridge, options.subnet.hostCidr);
      } catch (err) {
        if (!o.optional) throw err;
        log.warn(
          { err },
          `cannot set up bridge ${bridge}; bridge networking is off and new VMs use user-mode networking (pass --bridge NAME to make this an error, or --bridge off to silence it)`,
        );
        bridge = options.bridge = null;
        guestListen = null;
        if (options.defaultMode === 'bridge') options.defaultMode = 'user';
        return;
      }
      await devices.setNat(options.nat ? { subnet: options.subnet.cidr, bridge } : null);
      log.info(
        { bridge, subnet: options.subnet.cidr, host: options.subnet.hostIp, nat: options.nat },
        'bridge networking ready',
      );
    },

    resolve(spec) {
      const s = spec ?? { mode: options.defaultMode };
      if (s.mode === 'bridge' && !bridge) throw bridgeOff();
      return s;
    },

    define(vmId, spec, docs) {
      if (spec.mode === 'bridge') allocate(vmId);
      if (
        docs.userData !== undefined ||
        docs.metaData !== undefined ||
        docs.networkConfig !== undefined
      )
        repo.putSeed(vmId, docs);
    },

    prepare: (vm, dir) => bootNetwork(vm, dir, real),

    async plan(vm, dir) {
      const out: NetworkPlan = {
        boot: { nic: { mode: 'none' }, disks: [], cmdline: {} },
        commands: [],
        files: [],
      };
      out.boot = await bootNetwork(vm, dir, {
        startPasst: (_id, d) => {
          out.commands.push(passt!.argv(d));
          out.files.push(path.join(d, NET_SOCKET));
          return Promise.resolve(path.join(d, NET_SOCKET));
        },
        // The next free address, as allocate() would pick it; nothing leased.
        allocate: (id) => ({ ip: pickFree(options.subnet, repo.leasedIps()), mac: macFor(id) }),
        createTap: (_id, tap, br) => {
          out.commands.push(...tapArgv(tap, br));
          return Promise.resolve();
        },
        token: () => '<per-boot token>',
        writeSeed: (d) => {
          const iso = path.join(d, SEED_FILE);
          out.commands.push(['genisoimage', '-V', 'cidata', '-o', iso, '…']);
          out.files.push(iso);
          return Promise.resolve(iso);
        },
        removeSeed: () => Promise.resolve(),
      });
      return out;
    },

    persist: (vmId) => tokens.persist(vmId),

    async release(vmId) {
      tokens.revoke(vmId);
      // passt leaves with QEMU (--one-off); stop() covers one that did not, also after a restart.
      if (passt && options.vmDir) await passt.stop(path.join(options.vmDir, vmId));
      if (!withTap.delete(vmId)) return;
      await devices.deleteTap(tapFor(vmId));
    },

    verifyToken: (vmId, token) => tokens.verify(vmId, token),

    async recovered(running) {
      tokens.load(running);
      if (!bridge) return;
      const mine = new Map([...running].map((id) => [tapFor(id), id]));
      for (const tap of await devices.listTaps(bridge)) {
        const vmId = mine.get(tap);
        if (vmId !== undefined) {
          withTap.add(vmId);
          continue;
        }
        await devices
          .deleteTap(tap)
          .then(() => log.info({ tap }, 'removed a stale TAP of a VM that no longer runs'))
          .catch((err: unknown) => log.warn({ tap, err }, 'cannot remove a stale TAP'));
      }
    },
  };
}
