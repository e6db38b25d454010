/**
 * A guest kernel panic, noticed (issue 17). The µOS boots with `panic=-1`:
 * a panicking kernel reboots at once, and unnoticed the VM would come back
 * from a fresh boot with its jobs lost and nothing said. Two signs, whichever
 * comes first: the hypervisor's own event (QEMU's GUEST_PANICKED, where the
 * machine has a pvpanic device) and the kernel's `Kernel panic - not
 * syncing: …` line on the serial console (every backend with a console).
 * Either ends the VM's process and marks the VM failed with the panic's
 * message. A guest can print that line itself (its jobs run as root): it
 * then fails only itself, which it could do anyway by powering off.
 */
import type { VmState } from '../../protocol/rpc.js';
import type { VmContext } from './context.js';
import type { Live } from './live.js';

/** The kernel's panic() line (printed at KERN_EMERG, so `quiet` keeps it). */
const PANIC_LINE = /Kernel panic - not syncing: ([^\r\n]{0,512})[\r\n]/;
/** Bytes kept from one chunk to the next, so a line split across reads is found. */
const CARRY = 600;
/** States in which a guest runs code and can panic. */
const RUNNING: ReadonlySet<VmState> = new Set(['starting', 'ready', 'busy', 'running']);

/** Feed console output; `onPanic` is called once, with the panic's message. */
export function createPanicScanner(onPanic: (message: string) => void): (chunk: Buffer) => void {
  let carry = '';
  let seen = false;
  return (chunk) => {
    if (seen) return;
    // latin1: one char per byte, whatever the guest wrote; the line is ASCII.
    const text = carry + chunk.toString('latin1');
    const m = PANIC_LINE.exec(text);
    if (m) {
      seen = true;
      onPanic(m[1]!.trim());
      return;
    }
    carry = text.slice(-CARRY);
  };
}

/** The guest of `live` panicked: fail the VM with why, and end its process. */
export function guestPanicked(ctx: VmContext, live: Live, message: string): void {
  if (live.gone || live.exitIntent) return;
  const cur = ctx.vms.get(live.id);
  if (!cur || !RUNNING.has(cur.state)) return;
  live.log.error({ panic: message }, 'the guest kernel panicked');
  ctx.failBoot(live, 'BOOT_FAILED', `the guest kernel panicked: ${message || 'no message'}`);
}
