/**
 * A TCP relay that can go silent: `freeze()` stops forwarding on the
 * connections open now without closing them, as a cut cable or a dead
 * router would, so both ends learn of it only from their keepalives. New
 * connections are relayed as before.
 */
import { createServer, connect, type Socket } from 'node:net';

export interface TcpProxy {
  port: number;
  freeze(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const open = new Set<[Socket, Socket]>();
  const frozen: Socket[] = [];
  const server = createServer((inbound) => {
    const outbound = connect(target.port, target.host);
    const pair: [Socket, Socket] = [inbound, outbound];
    open.add(pair);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const end = (): void => {
      open.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    freeze() {
      for (const [a, b] of open) {
        a.unpipe(b);
        b.unpipe(a);
        a.pause();
        b.pause();
        frozen.push(a, b);
      }
      open.clear();
    },
    close() {
      for (const s of frozen) s.destroy();
      for (const [a, b] of open) {
        a.destroy();
        b.destroy();
      }
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
