/**
 * `mvirt port-forward VM [HOST_ADDR:]HOST_PORT:GUEST_PORT`: mvirtd listens on
 * the host address and carries each connection to the guest's port over the
 * agent channel (port.forward). Stays in the foreground, as `kubectl
 * port-forward` does: the forward lives as long as this command's connection
 * to mvirtd, so Ctrl-C (or losing the connection) ends it.
 */
import { MvirtError } from '../../protocol/errors.js';
import { UsageError } from './args.js';
import type { Command } from './command.js';
import { EXIT } from './exit.js';
import { json } from './output.js';

export interface ForwardSpec {
  hostAddress?: string;
  hostPort: number;
  guestPort: number;
}

const port = (s: string, what: string, min: number): number => {
  const n = /^\d{1,5}$/.test(s) ? Number(s) : NaN;
  if (!(n >= min && n <= 65535))
    throw new UsageError(
      `${what} ${JSON.stringify(s)} is not a port (${min}-65535)`,
      'port-forward',
    );
  return n;
};

/** `8080:80`, `0:80`, `127.0.0.1:8080:80`, `[::1]:8080:80`. */
export function parseForwardSpec(spec: string): ForwardSpec {
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?([^:]+):([^:]+)$/.exec(spec);
  if (!m)
    throw new UsageError(
      `${JSON.stringify(spec)}: expected [HOST_ADDR:]HOST_PORT:GUEST_PORT (e.g. 8080:80, 0:80, 127.0.0.1:8080:80, [::1]:8080:80)`,
      'port-forward',
    );
  const addr = m[1]?.replace(/^\[|\]$/g, '');
  return {
    ...(addr !== undefined ? { hostAddress: addr } : {}),
    hostPort: port(m[2]!, 'HOST_PORT', 0),
    guestPort: port(m[3]!, 'GUEST_PORT', 1),
  };
}

const hostPort = (a: string, p: number) => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);

export const portForwardCommands: Command[] = [
  {
    name: 'port-forward',
    summary: 'Forward a host TCP port to a port inside a VM (until Ctrl-C).',
    args: ['VM', 'SPEC'],
    usage: 'VM [HOST_ADDR:]HOST_PORT:GUEST_PORT [options]',
    options: {
      verbose: { type: 'boolean', short: 'v', help: 'print each connection on stderr' },
    },
    description:
      'mvirtd listens on HOST_ADDR:HOST_PORT (default 127.0.0.1; HOST_PORT 0 picks a\n' +
      'free port, printed) and carries each connection to 127.0.0.1:GUEST_PORT inside\n' +
      "the VM over its agent channel, whatever the VM's network (user, bridge, none).\n" +
      'The forward lasts while this command runs: Ctrl-C ends it. An address other\n' +
      'than loopback needs an admin (docs/security.md).',
    examples: [
      'mvirt port-forward web 8080:80',
      'mvirt port-forward web 0:80 -v',
      'mvirt port-forward db 127.0.0.1:15432:5432',
    ],
    run: async (ctx, p) => {
      const [vm, spec] = p.positionals;
      const f = parseForwardSpec(spec!);
      const verbose = p.values.verbose === true;
      const c = await ctx.client();
      const rec = await c.call('port.forward', { vm: vm!, ...f });
      const cleanups: (() => unknown)[] = [];
      try {
        return await new Promise<number>((resolve, reject) => {
          let done = false;
          const finish = (code: number, note?: string): void => {
            if (done) return;
            done = true;
            if (note) ctx.err(`${note}\n`);
            resolve(code);
          };
          void (async () => {
            cleanups.push(
              await c.watchPortForward(rec.id, (n) => {
                if (n.conn === 0 && n.event === 'close')
                  return finish(EXIT.OPERATION, `mvirt: the forward closed: ${n.error ?? ''}`);
                if (!verbose) return;
                if (n.event === 'open') ctx.err(`connection ${n.conn} from ${n.peer}\n`);
                else
                  ctx.err(
                    `connection ${n.conn} from ${n.peer} closed: ${n.bytesToGuest ?? 0} bytes in, ${n.bytesFromGuest ?? 0} out${n.error ? ` (${n.error})` : ''}\n`,
                  );
              }),
            );
            if (ctx.globals.json) ctx.out(json(rec));
            else
              ctx.out(
                `Forwarding from ${hostPort(rec.address, rec.port)} -> ${rec.vmName}:${rec.guestPort}\n`,
              );
            cleanups.push(ctx.io.onSignal(() => finish(EXIT.OK)));
            const onClose = (): void =>
              finish(
                EXIT.CONNECTION,
                'mvirt: lost the connection to the broker (the forward ended with it)',
              );
            c.mqtt.once('close', onClose);
            cleanups.push(() => c.mqtt.removeListener('close', onClose));
          })().catch(reject);
        });
      } finally {
        for (const fn of cleanups.reverse()) {
          try {
            await fn();
          } catch {
            // best effort: the remaining cleanups still run
          }
        }
        // Closing the connection ends the forward too; this only says who closed it.
        if (c.mqtt.connected)
          await c.call('port.close', { id: rec.id }, { timeoutMs: 5000 }).catch((err: unknown) => {
            if (!(err instanceof MvirtError)) throw err;
          });
      }
    },
  },
];
