/**
 * The agent over vsock under QEMU: `vhost-vsock` with a guest CID per VM,
 * where the host has `/dev/vhost-vsock`; without it QEMU advertises no vsock.
 *
 * Node cannot listen on AF_VSOCK, so the host's end is the µOS's own relay
 * (initramfs/src/vsock-connect.c) in `--listen` mode, built here with the
 * host's C compiler and run once per mvirtd: it accepts every guest's dial
 * of the host (CID 2, port 1024) and relays it to the unix socket
 * `<dir>/<cid>_1024`, where this module listens for the VM it gave that CID
 * (hybrid-vsock.ts, the listener of cloud-hypervisor and Firecracker). The
 * CID is set by the kernel (vhost-vsock drops what a guest sends under
 * another source CID), so the socket a connection arrives on is the VM.
 *
 * mvirtd opens the device and QEMU inherits it (`vhostfd=`): the VM's own
 * uid needs no access to it. The CID is kept in the VM's folder, so an
 * adopted VM gets its listener back after a restart of mvirtd.
 *
 * The relay binds port 1024 for every CID before any VM starts; a host user
 * who bound it first would be refused by the kernel to mvirtd, and VMs then
 * get no vsock (said at the first launch that wants it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, open, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import type { Socket } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { VSOCK_PORT } from '../../../protocol/agent.js';
import { MvirtError } from '../../../protocol/errors.js';
import { buildHelper, helperHash, VSOCK_HELPER } from '../../../images/helpers.js';
import { listenHybridVsock, type HybridVsockListener } from '../hybrid-vsock.js';
import { resolveProgram } from './confine.js';

/** The VM folder's record of its CID. */
export const CID_FILE = 'vsock-cid';
/** 0, 1 and 2 are the hypervisor, local and the host; guests start at 3. */
export const FIRST_GUEST_CID = 3;
/** vhost-vsock takes 32-bit CIDs; 2^32 − 1 is VMADDR_CID_ANY. */
const LAST_GUEST_CID = 0xfffffffe;

export interface QemuVsockOptions {
  /** Where the per-CID sockets live (made 0700); null: no vsock for QEMU. */
  dir: string | null;
  /** Where the relay is built, named by its source's hash; null: no vsock. */
  cacheDir: string | null;
  /** The vhost-vsock device. */
  device?: string;
  /** The C compiler the relay is built with (Debian's build-essential). */
  compiler?: string;
}

export interface VsockLease {
  cid: number;
  /** The opened device, for QEMU to inherit (`vhostfd=`); close it once QEMU is spawned. */
  device: FileHandle;
  /** Where the VM's agent arrives. */
  listener: HybridVsockListener;
}

export interface QemuVsock {
  /** Why VMs get no vsock on this host, or null (decided at construction). */
  readonly unavailable: string | null;
  /** A new launch's CID, device and listener; the relay is started at the first. */
  lease(vmDir: string): Promise<VsockLease>;
  /** The listener of an adopted VM, or null when it has no vsock. */
  reattach(vmDir: string): Promise<HybridVsockListener | null>;
  /** The VM's process is gone: its CID is free again. */
  release(vmDir: string): Promise<void>;
  close(): void;
}

/** Lowest free CID: not held by another VM folder next to this one nor in `also`. */
export function pickCid(vmDir: string, also: ReadonlySet<number> = new Set()): number {
  const taken = new Set(also);
  const root = path.dirname(vmDir);
  for (const name of existsSync(root) ? readdirSync(root) : []) {
    const dir = path.join(root, name);
    if (dir === vmDir) continue;
    const cid = readCid(dir);
    if (cid !== null) taken.add(cid);
  }
  for (let cid = FIRST_GUEST_CID; cid <= LAST_GUEST_CID; cid++) if (!taken.has(cid)) return cid;
  throw new MvirtError('CAPACITY_EXCEEDED', 'no free vsock CID');
}

export function readCid(vmDir: string): number | null {
  try {
    const cid = Number(readFileSync(path.join(vmDir, CID_FILE), 'utf8').trim());
    return Number.isInteger(cid) && cid >= FIRST_GUEST_CID && cid <= LAST_GUEST_CID ? cid : null;
  } catch {
    return null;
  }
}

export function createQemuVsock(o: QemuVsockOptions, log: Logger): QemuVsock {
  const device = o.device ?? '/dev/vhost-vsock';
  const compiler = resolveProgram(o.compiler ?? 'cc');
  const unavailable = ((): string | null => {
    if (!o.dir || !o.cacheDir) return 'no vsock folder configured';
    try {
      accessSync(device, constants.R_OK | constants.W_OK);
    } catch {
      return `${device} is missing or not usable (load the vhost_vsock module on a KVM host)`;
    }
    if (!compiler && !existsSync(relayPath(o.cacheDir)))
      return 'no C compiler (cc) to build the host vsock relay: install build-essential';
    return null;
  })();
  const vlog = log.child({ component: 'vsock' });
  let relay: Promise<ChildProcess> | null = null;
  /** CIDs handed out and not yet written to a VM folder (launches in flight). */
  const pending = new Set<number>();

  /** The relay, started once (again after it ended); a failed start is tried again next time. */
  const ensureRelay = (): Promise<ChildProcess> =>
    (relay ??= startRelay().catch((err: unknown) => {
      relay = null;
      throw err;
    }));

  const listenerOf = (dir: string, cid: number) =>
    listenHybridVsock(path.join(dir, String(cid)), VSOCK_PORT);

  async function startRelay(): Promise<ChildProcess> {
    const dir = o.dir!;
    const bin = relayPath(o.cacheDir!);
    if (!existsSync(bin)) {
      await mkdir(path.dirname(bin), { recursive: true, mode: 0o700 });
      const tmp = `${bin}.${process.pid}.tmp`;
      await buildHelper(VSOCK_HELPER, tmp);
      await rename(tmp, bin);
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const child = spawn(bin, ['--listen', String(VSOCK_PORT), dir], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let said = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        said += d.toString();
        if (said.includes('listening\n')) resolve();
      });
      child.once('error', reject);
      child.once('exit', (code, signal) =>
        reject(
          new MvirtError(
            'BOOT_FAILED',
            `the host vsock relay could not listen on port ${VSOCK_PORT}: ${said.trim() || (signal ?? `code ${code}`)}`,
          ),
        ),
      );
    });
    child.once('exit', (code, signal) => {
      vlog.warn({ code, signal, said: said.trim() }, 'the host vsock relay ended');
      relay = null;
    });
    // It lives as long as mvirtd (PR_SET_PDEATHSIG), but never keeps it alive:
    // a daemon (or a test) that is done exits, and the relay goes with it.
    child.unref();
    (child.stderr as Socket).unref();
    vlog.info({ pid: child.pid, port: VSOCK_PORT, dir }, 'host vsock relay listening');
    return child;
  }

  return {
    unavailable,
    async lease(vmDir) {
      if (unavailable) throw new MvirtError('CAPABILITY_UNSUPPORTED', `no vsock: ${unavailable}`);
      await ensureRelay();
      const cid = pickCid(vmDir, pending);
      pending.add(cid);
      try {
        const dev = await open(device, 'r+');
        try {
          const listener = await listenerOf(o.dir!, cid);
          await writeFile(path.join(vmDir, CID_FILE), `${cid}\n`, { mode: 0o600 });
          return { cid, device: dev, listener };
        } catch (err) {
          await dev.close();
          throw err;
        }
      } finally {
        pending.delete(cid);
      }
    },
    async reattach(vmDir) {
      const cid = readCid(vmDir);
      if (cid === null || unavailable) return null;
      await ensureRelay();
      return listenerOf(o.dir!, cid);
    },
    async release(vmDir) {
      // Its socket went with its listener (closed with the process or on a failed launch).
      await rm(path.join(vmDir, CID_FILE), { force: true });
    },
    close() {
      void relay?.then((c) => c.kill('SIGTERM')).catch(() => undefined);
      relay = null;
    },
  };
}

/** The relay binary, named by the hash of its source and headers (a change is built anew). */
function relayPath(cacheDir: string): string {
  const sum = helperHash(VSOCK_HELPER);
  return path.join(cacheDir, `vsock-relay-${sum.slice(0, 16)}`);
}
