/**
 * `mvirt console VM`: the VM's serial console over MQTT. Keystrokes go raw to
 * `vm/<id>/console/in`, bytes from `vm/<id>/console/out` go raw to stdout.
 * Ctrl+a then t leaves (Ctrl+a Ctrl+a sends one Ctrl+a), as in screen/picocom;
 * the terminal is restored on every way out.
 */
import { MvirtError } from '../../protocol/errors.js';
import { isLiveVm } from '../../protocol/states.js';
import type { Command } from './command.js';
import { EXIT } from './exit.js';

const CTRL_A = 0x01;

/**
 * Split input into bytes for the guest and an exit request. Keeps state
 * across chunks, since Ctrl+a and t may arrive in separate reads.
 */
export function escapeFilter(): (chunk: Buffer) => { send: Buffer; exit: boolean } {
  let armed = false;
  return (chunk) => {
    const out: number[] = [];
    for (const b of chunk) {
      if (armed) {
        armed = false;
        if (b === 0x74 /* t */ || b === 0x54 /* T */) return { send: Buffer.from(out), exit: true };
        if (b === CTRL_A) out.push(CTRL_A);
        else out.push(CTRL_A, b);
      } else if (b === CTRL_A) armed = true;
      else out.push(b);
    }
    return { send: Buffer.from(out), exit: false };
  };
}

export const consoleCommands: Command[] = [
  {
    name: 'console',
    summary: 'Attach to the serial console of a running VM (leave with Ctrl+a t).',
    args: ['VM'],
    description:
      "Shows the kernel and init output and the µOS's root shell on the console, an\n" +
      'emergency shell (none on an image built with "console": "off"). Input is sent\n' +
      'raw (Ctrl-C goes to the guest). For a shell as a job of your own, with its\n' +
      'window size and exit code, use `mvirt exec -it VM -- sh`. A non-terminal stdin\n' +
      'is sent as it comes, and the console stays attached after its end until\n' +
      'Ctrl+a t appears in it, a signal arrives, or the VM stops.',
    examples: ['mvirt console web-1'],
    run: async (ctx, p) => {
      const [ref] = p.positionals;
      const c = await ctx.client();
      const vm = await c.call('vm.get', { vm: ref! });
      if (!isLiveVm(vm.state))
        throw new MvirtError(
          'VM_BAD_STATE',
          `${vm.name} is ${vm.state}: start it first with \`mvirt vm start ${vm.name}\``,
        );
      const { stdin } = ctx.io;
      const tty = stdin.isTTY === true && typeof stdin.setRawMode === 'function';
      const cleanups: (() => unknown)[] = [];
      let restoreTty = (): void => {};
      try {
        return await new Promise<number>((resolve, reject) => {
          let done = false;
          const finish = (code: number, note?: string): void => {
            if (done) return;
            done = true;
            if (note) ctx.err(`${tty ? '\r\n' : ''}${note}\n`);
            resolve(code);
          };
          void (async () => {
            cleanups.push(
              await c.subscribe(c.topics.vmConsoleOut(vm.id), (_t, payload) => {
                ctx.io.stdout.write(payload);
              }),
            );
            cleanups.push(
              await c.watchVm(vm.id, (rec) => {
                if (!rec) finish(EXIT.OK, `[${vm.name} was deleted]`);
                else if (!isLiveVm(rec.state)) finish(EXIT.OK, `[${vm.name} is ${rec.state}]`);
              }),
            );
            const filter = escapeFilter();
            const onData = (chunk: Buffer | string): void => {
              const { send, exit } = filter(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
              if (send.length) void c.publish(c.topics.vmConsoleIn(vm.id), send).catch(reject);
              if (exit) finish(EXIT.OK, tty ? '[detached]' : undefined);
            };
            if (tty) {
              stdin.setRawMode!(true);
              restoreTty = () => void stdin.setRawMode!(false);
              ctx.err(`[attached to ${vm.name} (${vm.id}); leave with Ctrl+a t]\r\n`);
            }
            stdin.on('data', onData);
            stdin.resume();
            cleanups.push(() => {
              stdin.removeListener('data', onData);
              stdin.pause();
            });
            cleanups.push(ctx.io.onSignal(() => finish(EXIT.OK)));
            const onClose = (): void =>
              finish(EXIT.CONNECTION, 'mvirt: lost the connection to the broker');
            c.mqtt.once('close', onClose);
            cleanups.push(() => c.mqtt.removeListener('close', onClose));
          })().catch(reject);
        });
      } finally {
        // Restore the terminal first, whatever else fails.
        restoreTty();
        for (const f of cleanups.reverse()) {
          try {
            await f();
          } catch {
            // best effort: the remaining cleanups still run
          }
        }
      }
    },
  },
];
