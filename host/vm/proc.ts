/** Linux process facts used to recognise our own hypervisor processes. */
import { readFileSync } from 'node:fs';

/** Start time in clock ticks since boot (/proc/<pid>/stat field 22); null when gone. */
export function procStartTime(pid: number): number | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses: fields
  // after it are counted from the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const v = Number(rest[22 - 3]);
  return Number.isFinite(v) ? v : null;
}

/** True when `pid` runs and is the process that started at `startTime`. */
export const isSameProcess = (pid: number, startTime: number): boolean =>
  procStartTime(pid) === startTime;
