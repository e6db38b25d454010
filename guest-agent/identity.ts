/**
 * Who this VM is. The kernel command line names the VM the guest booted as
 * (`mvirt.vm=`), but a VM restored from a snapshot keeps that memory: a fork
 * would go on believing it is its source. So the host also hands each VM an
 * identity through the hypervisor (QEMU fw_cfg, protocol `Identity`), at a cold
 * boot (generation 0) and on every restore (a higher generation).
 *
 * At start a valid identity wins over the command line. Before each connect
 * attempt it is read again (a restore always drops the channel: the host side
 * is a new hypervisor process), and a new generation means this agent was
 * restored: its OS side (entropy, hostname, NIC) is applied here; what the
 * agent core must change (jobs, outbox, topics) is the caller's, before it
 * commits the change.
 */
import { Identity } from '../protocol/agent.js';
import { nameProblem } from '../protocol/topics.js';
import { formatIssues } from '../protocol/validate.js';
import type { Platform } from './platform/types.js';

export type IdentityRead = { identity: Identity; entropy: Buffer } | { problem: string };

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const IP = /^[0-9A-Fa-f.:]{2,45}$/;
const CIDR = /^[0-9A-Fa-f.:]{2,45}\/\d{1,3}$/;

/** The fw_cfg file's bytes: JSON padded with spaces (protocol encodeIdentity). */
export function parseIdentity(raw: Buffer): IdentityRead {
  // eslint-disable-next-line no-control-regex -- trailing NULs are padding too
  const text = raw.toString('utf8').replace(/[\s\u0000]+$/, '');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { problem: `not JSON: ${(err as Error).message}` };
  }
  const r = Identity.safeParse(value);
  if (!r.success) return { problem: formatIssues(r.error) };
  const id = r.data;
  const bad = nameProblem(id.vmId);
  if (bad) return { problem: `vmId ${id.vmId}: ${bad}` };
  if (!BASE64.test(id.entropy)) return { problem: 'entropy: not base64' };
  const net = id.net;
  if (net && !CIDR.test(net.ip)) return { problem: `net.ip ${net.ip}: expected ADDR/PREFIX` };
  for (const k of ['gw', 'dns'] as const) {
    const v = net?.[k];
    if (v !== undefined && !IP.test(v)) return { problem: `net.${k} ${v}: expected an address` };
  }
  return { identity: id, entropy: Buffer.from(id.entropy, 'base64') };
}

/** What the agent runs as. */
export interface Self {
  vmId: string;
  /** The TCP channel's password from the identity; undefined: the token file. */
  token: string | undefined;
  /** Undefined while no identity was read (a guest without one). */
  generation: number | undefined;
  net: Identity['net'];
}

/** A new generation, its OS side applied; the agent commits it once its own side is done. */
export interface Change {
  from: Self;
  to: Self;
  previousHostname: string;
  entropyBytes: number;
  network: 'applied' | 'none' | 'failed' | 'pending';
  /** Problems applying it, to log once the agent speaks as `to`. */
  warnings: string[];
}

export interface IdentityKeeper {
  readonly self: Self;
  /** At agent start: a valid identity wins over the command line. */
  adopt(): Promise<void>;
  /** Before a connect attempt: a new generation, applied to the OS, or null. */
  check(): Promise<Change | null>;
  /** Run as the change's new self from now on. */
  commit(change: Change): void;
  /**
   * Make the last restore's NIC change (if not yet) and say how it went. It
   * waits for the host's sync, after the hello (a spawn is too slow for the
   * ready path); the host keeps the fork's link down until then.
   */
  network(): Promise<NicOutcome>;
}

/** How a restore's NIC change went; `error` says why it failed. */
export interface NicOutcome {
  result: 'applied' | 'none' | 'failed';
  error?: string;
}

type Log = (level: 'info' | 'warn', message: string) => void;

const selfOf = (id: Identity): Self => ({
  vmId: id.vmId,
  token: id.token,
  generation: id.generation,
  net: id.net,
});

export function createIdentityKeeper(
  platform: Platform,
  cmdlineVmId: string,
  log: Log,
): IdentityKeeper {
  let self: Self = { vmId: cmdlineVmId, token: undefined, generation: undefined, net: undefined };
  let lastProblem = '';

  /** The identity now; null (warned once per distinct problem) when absent or unusable. */
  async function read(): Promise<{ identity: Identity; entropy: Buffer } | null> {
    let r: IdentityRead;
    try {
      const raw = await platform.readIdentity();
      if (!raw) return null;
      r = parseIdentity(raw);
    } catch (err) {
      r = { problem: `cannot read it: ${(err as Error).message}` };
    }
    if ('identity' in r) {
      lastProblem = '';
      return r;
    }
    if (r.problem !== lastProblem)
      log('warn', `identity ignored (running as ${self.vmId}): ${r.problem}`);
    lastProblem = r.problem;
    return null;
  }

  const NONE: NicOutcome = { result: 'none' };
  let nic: Promise<NicOutcome> = Promise.resolve(NONE);
  /** A restore's NIC change, made when the host first asks how it went (its sync). */
  let nicToDo: NonNullable<Identity['net']> | null = null;

  /**
   * Not on the way to the hello: `ip` is a spawn, and a spawn forks this
   * ~80 MB process with the event loop stopped (300+ ms under TCG). The
   * host keeps the fork's link down until its sync says the NIC is done.
   */
  function configureLater(net: NonNullable<Identity['net']>): void {
    nicToDo = net;
    nic = Promise.resolve(NONE);
  }

  function nicOutcome(): Promise<NicOutcome> {
    if (nicToDo) {
      const net = nicToDo;
      nicToDo = null;
      nic = platform.configureNic(net).then(
        (): NicOutcome => ({ result: 'applied' }),
        (err: Error): NicOutcome => ({ result: 'failed', error: err.message }),
      );
    }
    return nic;
  }

  /** Entropy first (nothing of this generation should draw from a cloned pool), then the hostname and the NIC. */
  async function applyOs(
    id: Identity,
    entropy: Buffer,
    netWas: Identity['net'],
    warnings: string[],
    background = false,
  ): Promise<Pick<Change, 'entropyBytes' | 'network'>> {
    let entropyBytes = 0;
    if (entropy.length > 0) {
      try {
        await platform.mixEntropy(entropy);
        entropyBytes = entropy.length;
      } catch (err) {
        warnings.push(`entropy: ${(err as Error).message}`);
      }
    }
    if (platform.uname().hostname !== id.hostname) {
      await platform
        .setHostname(id.hostname)
        .catch((err: Error) => warnings.push(`hostname ${id.hostname}: ${err.message}`));
    }
    let network: Change['network'] = 'none';
    if (id.net && JSON.stringify(id.net) !== JSON.stringify(netWas) && background) {
      configureLater(id.net);
      network = 'pending';
    } else if (id.net && JSON.stringify(id.net) !== JSON.stringify(netWas)) {
      try {
        await platform.configureNic(id.net);
        network = 'applied';
      } catch (err) {
        network = 'failed';
        warnings.push(`network: ${(err as Error).message}`);
      }
    }
    return { entropyBytes, network };
  }

  return {
    get self() {
      return self;
    },
    async adopt() {
      const r = await read();
      if (!r) return;
      self = selfOf(r.identity);
      // Another VM id than the command line's: this process started inside a
      // restored VM (the agent restarted after the restore); the one before it
      // may not have got to the hostname and NIC, so apply them (again).
      const restored = r.identity.vmId !== cmdlineVmId;
      const warnings: string[] = [];
      if (restored) await applyOs(r.identity, r.entropy, undefined, warnings);
      else {
        // A cold boot: the NIC is the command line's. The µOS names the VM by
        // its id until told otherwise: the identity's name then, as a fork
        // gets; a hostname cloud-config chose stays.
        await platform
          .mixEntropy(r.entropy)
          .catch((err: Error) => warnings.push(`entropy: ${err.message}`));
        if (platform.uname().hostname === cmdlineVmId && r.identity.hostname !== cmdlineVmId)
          await platform
            .setHostname(r.identity.hostname)
            .catch((err: Error) => warnings.push(`hostname: ${err.message}`));
      }
      for (const w of warnings) log('warn', `identity: ${w}`);
    },
    async check() {
      const r = await read();
      if (!r) return null;
      const id = r.identity;
      const restored =
        self.generation === undefined
          ? id.generation > 0 || id.vmId !== self.vmId
          : id.generation !== self.generation;
      if (!restored) {
        // An identity that was not there at start (the same VM's): take it.
        if (self.generation === undefined) self = selfOf(id);
        return null;
      }
      const warnings: string[] = [];
      const previousHostname = platform.uname().hostname;
      nicToDo = null;
      nic = Promise.resolve(NONE);
      const os = await applyOs(id, r.entropy, self.net, warnings, true);
      return { from: self, to: selfOf(id), previousHostname, ...os, warnings };
    },
    commit(change) {
      self = change.to;
    },
    network: nicOutcome,
  };
}
