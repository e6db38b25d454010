/**
 * The host's network devices through iproute2 and nftables, always as argv
 * (execFile, never a shell). Every failure is a NETWORK_ERROR carrying the
 * command and what it printed.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { MvirtError } from '../../protocol/errors.js';
import type { MvirtLogger } from '../log.js';
import { TAP_RE } from './subnet.js';

/** Runs a program with argv (and optional stdin); rejects with its stderr. Injectable for tests. */
export type Runner = (file: string, args: readonly string[], stdin?: string) => Promise<string>;

export const execRunner: Runner = (file, args, stdin) =>
  new Promise((resolve, reject) => {
    const child = execFile(file, [...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr: String(stderr).trim() }));
      else resolve(String(stdout));
    });
    if (stdin !== undefined) child.stdin?.end(stdin);
  });

interface LinkInfo {
  ifname: string;
  linkinfo?: { info_kind?: string };
  master?: string;
  operstate?: string;
}

/** The two `ip` commands that make a TAP on the bridge (createTap; dry runs show them). */
export const tapArgv = (name: string, bridge: string): string[][] => [
  ['ip', 'tuntap', 'add', 'dev', name, 'mode', 'tap'],
  ['ip', 'link', 'set', 'dev', name, 'master', bridge, 'up'],
];

export interface NetDevices {
  /** Create the bridge with the host address on it when missing; idempotent. */
  ensureBridge(name: string, hostCidr: string): Promise<void>;
  /** A fresh TAP attached to the bridge and up (a leftover of the same name is replaced). */
  createTap(name: string, bridge: string): Promise<void>;
  /** Remove a TAP; no error when it is already gone. */
  deleteTap(name: string): Promise<void>;
  /** mvirt's TAPs attached to this bridge (another mvirtd's bridge is not ours to sweep). */
  listTaps(bridge: string): Promise<string[]>;
  /** Install (or, with null, remove) the masquerade table for the subnet. */
  setNat(nat: { subnet: string; bridge: string } | null): Promise<void>;
}

export const NFT_TABLE = 'mvirt';

/** The nftables ruleset of outbound NAT; applied atomically by `nft -f -`. */
export function natRuleset(subnet: string, bridge: string): string {
  return [
    // add + delete + define: replaces an older version of the table atomically.
    `table ip ${NFT_TABLE}`,
    `delete table ip ${NFT_TABLE}`,
    `table ip ${NFT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${subnet} ip daddr != ${subnet} masquerade`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    iifname "${bridge}" accept`,
    `    oifname "${bridge}" ct state established,related accept`,
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Sets a /proc/sys value (per network namespace for net.*). */
export type Sysctl = (key: string, value: string) => Promise<void>;
const procSysctl: Sysctl = (key, value) => writeFile(`/proc/sys/${key.replace(/\./g, '/')}`, value);

export function createNetDevices(
  log: MvirtLogger,
  run: Runner = execRunner,
  sysctl: Sysctl = procSysctl,
): NetDevices {
  async function cmd(
    file: string,
    args: readonly string[],
    stdin?: string,
    o: { missingOk?: boolean } = {},
  ): Promise<string> {
    try {
      return await run(file, args, stdin);
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (o.missingOk && e.code === 'ENOENT') return '';
      const why =
        e.code === 'ENOENT'
          ? `${file} is not installed (Debian: apt-get install ${file === 'nft' ? 'nftables' : 'iproute2'})`
          : e.stderr || e.message;
      throw new MvirtError('NETWORK_ERROR', `${file} ${args.join(' ')}: ${why}`, {
        cause: err,
        details: { argv: [file, ...args] },
      });
    }
  }
  const ip = (...args: string[]) => cmd('ip', args);

  async function links(): Promise<LinkInfo[]> {
    return JSON.parse((await ip('-j', '-d', 'link', 'show')) || '[]') as LinkInfo[];
  }

  return {
    async ensureBridge(name, hostCidr) {
      const found = (await links()).find((l) => l.ifname === name);
      if (found && found.linkinfo?.info_kind !== 'bridge') {
        throw new MvirtError(
          'NETWORK_ERROR',
          `${name} exists but is not a bridge (${found.linkinfo?.info_kind ?? 'plain'}); pass another --bridge`,
        );
      }
      if (!found) {
        await ip('link', 'add', 'name', name, 'type', 'bridge');
        log.info({ bridge: name }, 'bridge created');
      }
      // replace: idempotent, and keeps an operator's other addresses on the bridge.
      await ip('addr', 'replace', hostCidr, 'dev', name);
      await ip('link', 'set', 'dev', name, 'up');
    },
    async createTap(name, bridge) {
      await ip('link', 'del', 'dev', name).catch(() => undefined);
      const [add, attach] = tapArgv(name, bridge);
      await ip(...add!.slice(1));
      try {
        await ip(...attach!.slice(1));
      } catch (err) {
        await ip('link', 'del', 'dev', name).catch(() => undefined);
        throw err;
      }
    },
    async deleteTap(name) {
      if (!TAP_RE.test(name)) return; // only ever ours
      try {
        await ip('link', 'del', 'dev', name);
      } catch (err) {
        const stderr = String((err as MvirtError).message);
        if (!/Cannot find device|does not exist/i.test(stderr)) throw err;
      }
    },
    async listTaps(bridge) {
      return (await links())
        .filter(
          (l) => TAP_RE.test(l.ifname) && l.linkinfo?.info_kind === 'tun' && l.master === bridge,
        )
        .map((l) => l.ifname);
    },
    async setNat(nat) {
      if (nat) {
        await cmd('nft', ['-f', '-'], natRuleset(nat.subnet, nat.bridge));
        // Masquerade needs forwarding; this netns-wide switch is left on at exit
        // (running VMs outlive mvirtd).
        await sysctl('net.ipv4.ip_forward', '1').catch((err: unknown) => {
          throw new MvirtError('NETWORK_ERROR', `cannot enable IPv4 forwarding: ${String(err)}`, {
            cause: err,
          });
        });
        log.info({ subnet: nat.subnet }, 'outbound NAT on (nftables masquerade)');
      } else {
        // Turning NAT off removes a table an earlier run left; absent is fine,
        // and so is a host without nftables (it cannot have such a table).
        await cmd('nft', ['-f', '-'], `table ip ${NFT_TABLE}\ndelete table ip ${NFT_TABLE}\n`, {
          missingOk: true,
        });
      }
    },
  };
}
