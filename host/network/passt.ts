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
 * How it is wired: mvirtd starts passt before QEMU (boot step 'prepare
 * network'), listening on `<vm dir>/net.sock` (`--socket`, `--runas` mvirtd's
 * own uid so that it can bind in the 0700 VM folder; passt otherwise drops to
 * `nobody`), and waits for the socket to appear; QEMU connects to it
 * (`-netdev stream,server=off`). With `--one-off` passt exits when QEMU
 * closes the stream: its life is the VM's. (Handing passt an already
 * connected socket with `--fd` was tried first: passt 2023.03 then never
 * learns the guest's MAC and only ARP replies reach the guest.) passt
 * sandboxes itself into new namespaces and forks, so the pid we spawn is not
 * the one that stays: it runs in its own session and process group
 * (detached), kept in `<vm dir>/passt.pgid`, which `stop()` signals; after a
 * daemon restart the file is all that is needed.
 *
 * Cost, seen on the 2-core TCG machine: starting passt took ~50 ms of the
 * boot (timed with the first, --fd wiring; the socket wait adds little), against
 * 30–60 s boots to ready under load. Throughput: bench/network.ts measures
 * guest→host TCP over the bridge at ~2.2× what passt carries (63 vs 29 and
 * 114 vs 51 MiB/s in two runs, 2026-12-06); against slirp it is not measured.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, watch } from 'node:fs';
import { access, constants, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MvirtError } from '../../protocol/errors.js';
import type { MvirtLogger } from '../log.js';

/** The guest's view, the same addresses slirp gave (the µOS is configured from the kernel command line). */
export const PASST_NET = { ip: '10.0.2.15', prefix: 24, gw: '10.0.2.2', dns: '10.0.2.3' } as const;
export const NET_SOCKET = 'net.sock';
const PGID_FILE = 'passt.pgid';
const LOG_FILE = 'passt.log';

export function passtArgs(socket: string, uid: number): string[] {
  return [
    '--foreground',
    '--one-off',
    '--quiet',
    '--socket',
    socket,
    '--runas',
    String(uid),
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
  /** Start passt listening on `<dir>/net.sock`; resolves once the socket is there. */
  start(vmId: string, dir: string): Promise<string>;
  /** What start() would run for this folder (a dry run shows it). */
  argv(dir: string): string[];
  /** Stop the VM's passt if it still runs (idempotent; works after a daemon restart). */
  stop(dir: string): Promise<void>;
}

/** Resolves once `file` exists in `dir` (fs.watch, no polling), or rejects when `failed` does. */
function appears(dir: string, file: string, failed: Promise<never>): Promise<void> {
  return new Promise((resolve, reject) => {
    const w = watch(dir, (_ev, name) => {
      if (name === file && existsSync(path.join(dir, file))) done();
    });
    const done = (err?: unknown): void => {
      w.close();
      if (err) reject(err);
      else resolve();
    };
    failed.catch(done);
    if (existsSync(path.join(dir, file))) done();
  });
}

export function createPasst(o: { binary?: string; log: MvirtLogger }): Passt {
  const binary = o.binary ?? 'passt';
  return {
    argv: (dir) => [binary, ...passtArgs(path.join(dir, NET_SOCKET), process.getuid?.() ?? 0)],
    async start(vmId, dir) {
      const sock = path.join(dir, NET_SOCKET);
      await rm(sock, { force: true });
      const logFd = openSync(path.join(dir, LOG_FILE), 'a', 0o600);
      try {
        const child = spawn(binary, passtArgs(sock, process.getuid?.() ?? 0), {
          cwd: dir,
          detached: true,
          stdio: ['ignore', logFd, logFd],
          env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
        });
        const failed = new Promise<never>((_, reject) => {
          child.once('error', (err) =>
            reject(
              new MvirtError(
                'NETWORK_UNAVAILABLE',
                `cannot start passt for user-mode networking: ${err.message}; install the passt package (apt-get install passt)`,
              ),
            ),
          );
          // passt forks into its sandbox: an exit before the socket exists is a failure.
          child.once('exit', (code) => {
            if (!existsSync(sock))
              reject(
                new MvirtError(
                  'NETWORK_UNAVAILABLE',
                  `passt exited (${String(code)}) before listening; see ${path.join(dir, LOG_FILE)}`,
                ),
              );
          });
        });
        failed.catch(() => undefined);
        await appears(dir, NET_SOCKET, failed);
        child.unref();
        await writeFile(path.join(dir, PGID_FILE), `${child.pid}\n`, { mode: 0o600 });
        o.log.info({ vmId, pgid: child.pid }, 'passt started (user-mode networking)');
        return sock;
      } finally {
        closeSync(logFd);
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
