/**
 * A VM's own log of what its agent said (`log` messages): `<vm dir>/agent.log`,
 * bounded on disk like the console log (hypervisors/console-log.ts keeps its
 * newest half when full) and bounded in rate before anything is queued, never
 * mvirtd's own log at a level the guest picks (issue 12: 60 s of guest log
 * lines took mvirtd from 160 MiB to 3.3 GiB).
 *
 * Lines are written as `ISO-time LEVEL message`, the message already inert
 * (host/agent/link.ts). Beyond the rate, lines are dropped and counted; the
 * count reaches the event log aggregated (events/guest-gate.ts).
 */
import path from 'node:path';
import type { Log } from '../../protocol/agent.js';
import { createBoundedLog, type BoundedLog } from '../hypervisors/console-log.js';

export interface GuestLogOptions {
  /** The file keeps at most this many bytes. */
  maxBytes: number;
  /** Lines a VM may log at once … */
  burst: number;
  /** … then this many per second. */
  perSecond: number;
}

/**
 * 1 MiB like the console log; 200 lines at once and 50 a second cover a
 * boot's worth of agent messages (about 20 on the µOS) with room to spare,
 * and keep a flood at 200 KiB/s of 4 KiB lines at most.
 */
export const DEFAULT_GUEST_LOG: GuestLogOptions = {
  maxBytes: 1024 * 1024,
  burst: 200,
  perSecond: 50,
};

export const GUEST_LOG_FILE = 'agent.log';

/**
 * Guest log lines count at most as info: a guest must not make its words
 * look like the daemon's warnings or errors. The level it asked for is kept
 * beside it in the VM's own file.
 */
export const GUEST_LOG_LEVEL = {
  debug: 'debug',
  info: 'info',
  warn: 'info',
  error: 'info',
} as const;

export interface GuestLog {
  /** Write one line; false when the VM is over its rate (the line is dropped). */
  write(m: Log): boolean;
  flush(): Promise<void>;
}

export function createGuestLog(
  dir: string,
  opts: Partial<GuestLogOptions> = {},
  now: () => number = Date.now,
): GuestLog {
  const o = { ...DEFAULT_GUEST_LOG, ...opts };
  let tokens = o.burst;
  let at = now();
  // Opened on the first line: most VMs' agents never log.
  let file: Promise<BoundedLog> | undefined;
  return {
    write(m) {
      const t = now();
      tokens = Math.min(o.burst, tokens + ((t - at) / 1000) * o.perSecond);
      at = t;
      if (tokens < 1) return false;
      tokens -= 1;
      const level = GUEST_LOG_LEVEL[m.level];
      const asked = level === m.level ? '' : ` (guest said ${m.level})`;
      const line = `${new Date(t).toISOString()} ${level.toUpperCase()}${asked} ${m.message}\n`;
      file ??= createBoundedLog(path.join(dir, GUEST_LOG_FILE), o.maxBytes);
      void file.then((f) => f.write(line)).catch(() => undefined);
      return true;
    },
    async flush() {
      if (file) await (await file).flush();
    },
  };
}
