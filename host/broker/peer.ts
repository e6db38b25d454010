/**
 * Who is on the other end of an accepted unix socket: the local user the
 * audit log names for an anonymous controller on `<data-dir>/mvirt.sock`.
 *
 * Node has no SO_PEERCRED API. The choices were a small N-API addon
 * (getsockopt(SO_PEERCRED); exact and cheap, but a native build in every
 * install and in the bundles), or the kernel's own answer through sock_diag,
 * which iproute2's `ss -xp` reads: it lists each unix socket's inode, its
 * peer's inode and the processes holding it. We take the latter: no native
 * code to build or ship, iproute2 is already a dependency (bridge networking),
 * and the cost lands only on unix-socket connects, off the request path
 * (measured here: 6–12 ms for one `ss -xpnH` with a few hundred sockets, run
 * while the client's CONNECT is in flight). The result names the process that
 * holds the peer socket now; a peer that passed its fd on is named by the
 * holder, which is what SO_PEERCRED would not do, so the pid is logged too.
 */
import { execFile } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import type net from 'node:net';

export interface PeerCred {
  uid: number;
  /** Login name from /etc/passwd, or null when the uid has none. */
  user: string | null;
  pid: number;
}

const SS_TIMEOUT_MS = 5000;

/** The inode of the socket behind a net.Socket (`socket:[12345]` in /proc/self/fd). */
function inodeOf(socket: net.Socket): string | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return null;
  try {
    return /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** From `ss -xpnH` output: the pid holding the socket whose peer is `inode`. */
export function peerPidFromSs(output: string, inode: string): number | null {
  for (const line of output.split('\n')) {
    // netid state recv-q send-q local local-inode peer peer-inode [users:((…))]
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[7] !== inode || f[5] === inode) continue;
    const m = /pid=(\d+)/.exec(f.slice(8).join(' '));
    if (m) return Number(m[1]);
  }
  return null;
}

function uidOf(pid: number): number | null {
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export function userName(uid: number, passwd = '/etc/passwd'): string | null {
  try {
    for (const line of readFileSync(passwd, 'utf8').split('\n')) {
      const f = line.split(':');
      if (f.length >= 3 && Number(f[2]) === uid && f[2] !== '') return f[0]!;
    }
  } catch {
    // no passwd file: the uid alone
  }
  return null;
}

/** The peer of an accepted unix socket; null when it cannot be told (logged as unknown). */
export function peerCred(socket: net.Socket): Promise<PeerCred | null> {
  const inode = inodeOf(socket);
  if (inode === null) return Promise.resolve(null);
  return new Promise((resolve) => {
    execFile(
      'ss',
      ['-xpnH'],
      { timeout: SS_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout) => {
        if (err) return resolve(null);
        const pid = peerPidFromSs(stdout, inode);
        const uid = pid === null ? null : uidOf(pid);
        resolve(pid === null || uid === null ? null : { uid, user: userName(uid), pid });
      },
    );
  });
}
