/**
 * User-mode networking through passt, one per VM: outbound access for the
 * guest without any path to the host's loopback.
 *
 * Why not QEMU's slirp: slirp maps the guest's gateway 10.0.2.2 to the host's
 * 127.0.0.1, so a guest reached every loopback listener (mvirtd's controller
 * port answered it as an anonymous controller). slirp can only be restricted
 * all or nothing (`restrict=on` also cuts outbound access). passt has
 * `--no-map-gw`: the gateway is not the host; guests keep outbound TCP/UDP,
 * and what they can reach on the host is what anyone on the network can
 * (listeners bound to the host's own addresses, which always authenticate).
 *
 * How it is wired: QEMU listens on `<vm dir>/net.sock` (`-netdev stream,
 * server=on`), mvirtd connects to it once QEMU runs and hands that connected
 * socket to passt as fd 3 (`--fd 3`). passt never binds a path (as root it
 * drops to `nobody` before binding, and the VM folder is 0700), and with
 * `--one-off` it exits when QEMU closes the stream: its life is the VM's.
 * passt sandboxes itself into new namespaces and forks, so the pid we spawn
 * is not the one that stays: it runs in its own session and process group
 * (detached), kept in `<vm dir>/passt.pgid`, which `stop()` signals; after a
 * daemon restart the file is all that is needed.
 *
 * Measured on the 2-core TCG machine (bench/network.ts, 1 vCPU guest):
 * see the figures in the commit that chose it and in docs.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { openSync, closeSync } from 'node:fs';
import { access, constants, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { MvirtLogger } from '../log.js';

/** The guest's view, the same addresses slirp gave (the µOS is configured from the kernel command line). */
export const PASST_NET = { ip: '10.0.2.15', prefix: 24, gw: '10.0.2.2', dns: '10.0.2.3' } as const;
export const NET_SOCKET = 'net.sock';
const PGID_FILE = 'passt.pgid';
const LOG_FILE = 'passt.log';

export function passtArgs(): string[] {
  return [
    '--foreground',
    '--one-off',
    '--quiet',
    '--fd',
    '3',
    // The gateway is not the host: no path to the host's loopback.
    '--no-map-gw',
    '--address',
    PASST_NET.ip,
    '--netmask',
    String(PASST_NET.prefix),
    '--gateway',
    PASST_NET.gw,
    // DNS queries to 10.0.2.3 go to the host's resolvers (as slirp did).
    '--dns-forward',
    PASST_NET.dns,
    '--ipv4-only',
    // No port forwarding into the guest.
    '--tcp-ports',
    'none',
    '--udp-ports',
    'none',
  ];
}

/** Is some process of group `pgid` a passt (guards against a reused group id)? */
async function passtInGroup(pgid: number): Promise<boolean> {
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const pgrp = Number(stat.slice(close + 2).split(' ')[2]);
    if (pgrp === pgid && comm === 'passt') return true;
  }
  return false;
}

/** Is `passt` on PATH (an executable file)? */
export async function passtInstalled(binary = 'passt'): Promise<boolean> {
  const dirs = binary.includes('/') ? [''] : (process.env.PATH ?? '/usr/bin:/bin').split(':');
  for (const d of dirs) {
    try {
      await access(d ? path.join(d, binary) : binary, constants.X_OK);
      return true;
    } catch {
      // next
    }
  }
  return false;
}

export interface Passt {
  /** Connect to QEMU's stream socket in `dir` and start passt on it. */
  start(vmId: string, dir: string): Promise<void>;
  /** Stop the VM's passt if it still runs (idempotent; works after a daemon restart). */
  stop(dir: string): Promise<void>;
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

export function createPasst(o: { binary?: string; log: MvirtLogger }): Passt {
  const binary = o.binary ?? 'passt';
  return {
    async start(vmId, dir) {
      const sock = await connectUnix(path.join(dir, NET_SOCKET));
      const logFd = openSync(path.join(dir, LOG_FILE), 'a', 0o600);
      try {
        const child = spawn(binary, passtArgs(), {
          cwd: dir,
          detached: true,
          stdio: ['ignore', logFd, logFd, sock],
          env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
        });
        const spawned = once(child, 'spawn');
        const failed = once(child, 'error').then(([err]) => {
          throw new MvirtError(
            'NETWORK_UNAVAILABLE',
            `cannot start passt for user-mode networking: ${(err as Error).message}; install the passt package (apt-get install passt)`,
          );
        });
        await Promise.race([spawned, failed]);
        child.unref();
        await writeFile(path.join(dir, PGID_FILE), `${child.pid}\n`, { mode: 0o600 });
        o.log.info({ vmId, pgid: child.pid }, 'passt started (user-mode networking)');
      } finally {
        closeSync(logFd);
        // passt holds its own copy of the stream now; QEMU's end stays open.
        sock.destroy();
      }
    },

    async stop(dir) {
      let pgid: number;
      try {
        pgid = Number((await readFile(path.join(dir, PGID_FILE), 'utf8')).trim());
      } catch {
        return;
      }
      if (Number.isInteger(pgid) && pgid > 1 && (await passtInGroup(pgid))) {
        try {
          // With --one-off passt has usually left with QEMU; this covers the rest.
          process.kill(-pgid, 'SIGTERM');
        } catch {
          // already gone
        }
      }
      await rm(path.join(dir, PGID_FILE), { force: true });
    },
  };
}
