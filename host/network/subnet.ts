/**
 * IPv4 subnet arithmetic for address allocation, and the names derived from a
 * VM id (MAC, TAP). Written by hand: it is a few lines of integer math, and
 * the parsing libraries on npm (ipaddr.js and friends) do not enumerate free
 * hosts anyway.
 */
import { createHash } from 'node:crypto';
import { MvirtError } from '../../protocol/errors.js';

export interface Subnet {
  /** `10.213.0.0/16` */
  cidr: string;
  prefix: number;
  /** The host's own address on the bridge (the first host address): gateway and DNS of guests. */
  hostIp: string;
  /** `10.213.0.1/16`, as given to `ip addr`. */
  hostCidr: string;
  /** Guest addresses: first and last usable (inclusive), as integers. */
  first: number;
  last: number;
  contains(ip: string): boolean;
}

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

export function ipToInt(ip: string): number {
  const m = IPV4.exec(ip);
  if (!m) throw new MvirtError('CONFIG_INVALID', `${JSON.stringify(ip)} is not an IPv4 address`);
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

export const intToIp = (n: number): string =>
  [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');

/** `10.213.0.0/16` → the subnet; prefixes /8 … /29 (at least two guests). */
export function parseSubnet(cidr: string): Subnet {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr);
  const prefix = m ? Number(m[2]) : NaN;
  if (!m || prefix < 8 || prefix > 29) {
    throw new MvirtError(
      'CONFIG_INVALID',
      `--subnet: expected an IPv4 network like 10.213.0.0/16 (prefix /8 to /29), got ${JSON.stringify(cidr)}`,
    );
  }
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const addr = ipToInt(m[1]!);
  if ((addr & mask) >>> 0 !== addr) {
    throw new MvirtError(
      'CONFIG_INVALID',
      `--subnet: ${cidr} has host bits set; did you mean ${intToIp((addr & mask) >>> 0)}/${prefix}?`,
    );
  }
  const broadcast = (addr | ~mask) >>> 0;
  const host = addr + 1;
  return {
    cidr: `${intToIp(addr)}/${prefix}`,
    prefix,
    hostIp: intToIp(host),
    hostCidr: `${intToIp(host)}/${prefix}`,
    first: host + 1,
    last: broadcast - 1,
    contains: (ip) => {
      try {
        return (ipToInt(ip) & mask) >>> 0 === addr;
      } catch {
        return false;
      }
    },
  };
}

/** The lowest guest address not in `taken`; NETWORK_EXHAUSTED when there is none. */
export function pickFree(subnet: Subnet, taken: ReadonlySet<string>): string {
  for (let n = subnet.first; n <= subnet.last; n++) {
    const ip = intToIp(n);
    if (!taken.has(ip)) return ip;
  }
  throw new MvirtError(
    'NETWORK_EXHAUSTED',
    `every address of ${subnet.cidr} is allocated; delete VMs or start mvirtd with a larger --subnet`,
    { details: { subnet: subnet.cidr } },
  );
}

/**
 * A stable MAC from the VM id: locally administered, unicast (first octet
 * 0x02), 40 bits of SHA-256 so that collisions stay unlikely across many VMs.
 */
export function macFor(vmId: string): string {
  const h = createHash('sha256').update(vmId).digest();
  return ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** TAP names: `mv` + the VM id's hex (interface names are at most 15 bytes). */
export const TAP_PREFIX = 'mv';
export const TAP_RE = /^mv[0-9a-f]{12}$/;

export function tapFor(vmId: string): string {
  const hex = /^vm-([0-9a-f]{12})$/.exec(vmId)?.[1];
  // Ids not made by mvirtd (tests, imports) still get a stable, valid name.
  return `${TAP_PREFIX}${hex ?? createHash('sha256').update(vmId).digest('hex').slice(0, 12)}`;
}
