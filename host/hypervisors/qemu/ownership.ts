/**
 * Is a leftover process this backend's QEMU of a VM folder? Only looks (pid,
 * start time, command line); never signals anything.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import type { AttachFailureReason, Ownership, VmRuntime } from '../types.js';
import { readCmdline, readProcStat } from '../proc.js';
import { qemuPaths } from './args.js';

export const QEMU_BACKEND = 'qemu';

export function attachError(
  reason: AttachFailureReason,
  message: string,
  cause?: unknown,
): MvirtError {
  return new MvirtError('HYPERVISOR_ERROR', message, { details: { reason }, cause });
}

/** Ours: alive, same start time, and a qemu-system whose QMP socket is this folder's. */
export function identify(runtime: VmRuntime, dir: string): Ownership {
  if (runtime.backend !== QEMU_BACKEND) return 'not-ours';
  const stat = readProcStat(runtime.pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return 'gone';
  if (stat.startTime !== runtime.startTime) return 'pid-reused';
  const argv = readCmdline(runtime.pid) ?? [];
  const qmpArg = `socket,id=qmp,path=${qemuPaths(dir).qmp.replace(/,/g, ',,')},`;
  if (
    !path.basename(argv[0] ?? '').startsWith('qemu-system') ||
    !argv.some((a) => a.startsWith(qmpArg))
  ) {
    return 'not-ours';
  }
  return 'ours';
}

export const OWNERSHIP_TEXT: Record<
  Exclude<Ownership, 'ours'>,
  (rt: VmRuntime, dir: string) => string
> = {
  gone: (rt) => `QEMU process ${rt.pid} is gone`,
  'pid-reused': (rt) => `pid ${rt.pid} now belongs to another process (start time differs)`,
  'not-ours': (rt, dir) =>
    rt.backend !== QEMU_BACKEND
      ? `runtime belongs to backend ${rt.backend}`
      : `pid ${rt.pid} is not the QEMU of ${dir}`,
};

/**
 * QEMUs of VM folders under `vmRoot` that no runtime row names: their QMP
 * socket argument points into `<vmRoot>/<id>/`. SIGKILLed: nothing records
 * them, so nothing would ever end them.
 */
export function disposeOrphans(vmRoot: string, known: ReadonlySet<number>, log: Logger): number[] {
  const prefix = `socket,id=qmp,path=${vmRoot.replace(/,/g, ',,')}/`;
  const ended: number[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || known.has(pid) || pid === process.pid) continue;
    const argv = readCmdline(pid);
    if (!argv || !path.basename(argv[0] ?? '').startsWith('qemu-system')) continue;
    if (!argv.some((a) => a.startsWith(prefix))) continue;
    try {
      process.kill(pid, 'SIGKILL');
      ended.push(pid);
    } catch {
      // gone meanwhile
    }
  }
  if (ended.length > 0)
    log.warn(
      { pids: ended, vmRoot },
      'ended QEMU processes that no VM record names (orphans of a killed daemon)',
    );
  return ended;
}
