/**
 * The host end of a hybrid vsock (cloud-hypervisor and Firecracker): the VMM
 * exposes the guest's vsock device as a unix socket `<uds>`, and when a guest
 * dials the host (CID 2) on port P, the VMM connects to `<uds>_P`, which the
 * host must be listening on. mvirtd listens there before the VMM starts and
 * hands each connection to the agent session (RunningVm.connectAgent). The
 * socket is the VM: nothing else can reach it (0600 in the VM's folder).
 */
import { chmod, rm } from 'node:fs/promises';
import net from 'node:net';
import { MvirtError } from '../../protocol/errors.js';

export interface HybridVsockListener {
  readonly path: string;
  /** The next connection the guest opened (queued ones first); rejects after timeoutMs or close(). */
  accept(timeoutMs: number): Promise<net.Socket>;
  close(): Promise<void>;
}

/** The path the VMM connects to when the guest dials the host on `port`. */
export const hybridPortPath = (uds: string, port: number): string => `${uds}_${port}`;

export async function listenHybridVsock(uds: string, port: number): Promise<HybridVsockListener> {
  const file = hybridPortPath(uds, port);
  await rm(file, { force: true });
  const queue: net.Socket[] = [];
  const waiters: { resolve(s: net.Socket): void; reject(e: Error): void }[] = [];
  let closed = false;
  /** Every connection the guest made: they end with the listener (see close()). */
  const all = new Set<net.Socket>();
  const server = net.createServer((s) => {
    all.add(s);
    s.once('close', () => all.delete(s));
    const w = waiters.shift();
    if (w) return w.resolve(s);
    // A guest that redials while nobody waits: the newest connection wins,
    // an older one waiting here belonged to an agent that has given up on it.
    for (const old of queue.splice(0)) old.destroy();
    s.once('close', () => {
      const i = queue.indexOf(s);
      if (i >= 0) queue.splice(i, 1);
    });
    queue.push(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(file, 0o600);
  return {
    path: file,
    accept(timeoutMs) {
      if (closed)
        return Promise.reject(new MvirtError('AGENT_UNAVAILABLE', 'the vsock listener is closed'));
      const s = queue.shift();
      if (s) return Promise.resolve(s);
      return new Promise((resolve, reject) => {
        const w = {
          resolve: (sock: net.Socket) => {
            clearTimeout(t);
            resolve(sock);
          },
          reject: (e: Error) => {
            clearTimeout(t);
            reject(e);
          },
        };
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(
            new MvirtError(
              'TIMEOUT',
              `the guest did not dial vsock port ${port} in ${timeoutMs} ms`,
            ),
          );
        }, timeoutMs);
        t.unref();
        waiters.push(w);
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const w of waiters.splice(0))
        w.reject(new MvirtError('AGENT_UNAVAILABLE', 'the vsock listener is closed'));
      queue.length = 0;
      // server.close() calls back only once every connection has ended, and a
      // connection held by a guest that is not running (paused, or whose VMM is
      // gone) may never end by itself: measured as a 20 s wait for a suspended
      // VM's exit, until the broker's keep-alive gave up on it. The listener
      // closes with its VM (exit) or its daemon (detach): so do its connections.
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of all) s.destroy();
      await stopped;
      await rm(file, { force: true });
    },
  };
}
