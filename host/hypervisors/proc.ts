/**
 * Process facts read from /proc, for every backend: liveness, start time (the
 * pid-reuse guard persisted in VmRuntime) and the command line (to check that
 * an adopted pid is really the backend's hypervisor). Node has no pidfd, so
 * adopted processes are watched through these plus their control socket
 * closing. The one parser of /proc/<pid>/stat in host/.
 */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  pid: number;
  /** Single-letter state: R, S, D, Z (zombie), X (dead), … */
  state: string;
  /** Field 22: start time in clock ticks since boot. */
  startTime: number;
}

/** Parse /proc/<pid>/stat; null when the process does not exist. */
export function readProcStat(pid: number, procRoot = '/proc'): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(`${procRoot}/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  return parseProcStat(text);
}

/**
 * The comm field (2) is in parentheses and may itself contain spaces and
 * parentheses, so split after the LAST ')'. Field 3 (state) is then the first
 * token and field 22 (starttime) the 20th.
 */
export function parseProcStat(text: string): ProcStat | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const pid = Number.parseInt(text, 10);
  const rest = text
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  const state = rest[0];
  const startTime = Number(rest[19]);
  if (!state || !Number.isFinite(pid) || !Number.isFinite(startTime)) return null;
  return { pid, state, startTime };
}

/** Start time in clock ticks since boot (field 22); null when the process is gone. */
export function procStartTime(pid: number, procRoot = '/proc'): number | null {
  return readProcStat(pid, procRoot)?.startTime ?? null;
}

/** True when `pid` runs (not a zombie) and is the process that started at `startTime`. */
export function isSameProcess(pid: number, startTime: number, procRoot = '/proc'): boolean {
  const st = readProcStat(pid, procRoot);
  return st !== null && st.state !== 'Z' && st.state !== 'X' && st.startTime === startTime;
}

/** Alive = exists and is not a zombie (an exited process its parent has not reaped yet). */
export function isAlive(pid: number, procRoot = '/proc'): boolean {
  const st = readProcStat(pid, procRoot);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

/** argv of a process (NUL-separated in /proc/<pid>/cmdline); null when gone. */
export function readCmdline(pid: number, procRoot = '/proc'): string[] | null {
  try {
    const raw = readFileSync(`${procRoot}/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((s, i, a) => s !== '' || i < a.length - 1);
  } catch {
    return null;
  }
}
