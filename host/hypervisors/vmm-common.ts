/**
 * What the REST-driven VMMs (cloud-hypervisor, Firecracker) share besides the
 * RunningVm (api-vm.ts): the VM folder's layout, the spawn, ownership of a
 * leftover process, and saved states.
 *
 * Both VMMs run with the VM's folder as their working directory and are
 * given every path inside it relative to it (API socket, console, vsock,
 * the disks linked in as `drive<N>`). Two reasons: a saved state records
 * those paths, so a state taken from one VM resumes in another VM's folder
 * unchanged (a fork); and sun_path's 108 bytes never bind however deep the
 * data folder is. Ownership is then checked on /proc/<pid>/cwd.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { open, readdir, rm, stat, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { MvirtError } from '../../protocol/errors.js';
import { readCmdline, readProcStat } from './proc.js';
import type {
  AttachFailureReason,
  LaunchSpec,
  Ownership,
  SavedState,
  StateSpec,
  VmRuntime,
} from './types.js';

/** Names inside the VM's folder (relative: see the header). */
export const VMM_FILES = {
  api: 'api.sock',
  console: 'console',
  consoleSocket: 'console.sock',
  consoleLog: 'console.log',
  vsock: 'vsock.sock',
  log: 'vmm.log',
} as const;

/** The guest's CID: any ≥ 3 will do, the hybrid vsock's socket is per VM. */
export const GUEST_CID = 3;

export const driveName = (i: number): string => `drive${i}`;

/** Link every disk of the spec into the VM's folder as drive<N> (relative names for the VMM). */
export async function linkDrives(spec: Pick<LaunchSpec, 'dir' | 'disks'>): Promise<string[]> {
  const names: string[] = [];
  for (const [i, d] of spec.disks.entries()) {
    const name = driveName(i);
    const link = path.join(spec.dir, name);
    await rm(link, { force: true });
    await symlink(path.resolve(d.path), link);
    names.push(name);
  }
  return names;
}

export interface SpawnedVmm {
  child: ChildProcess;
  pid: number;
  startTime: number;
}

/**
 * The VMM in its own session (it outlives mvirtd, as QEMU does), in the VM's
 * folder, with only PATH in its environment. stdin/stdout may be given (the
 * Firecracker console); stderr goes to the folder's vmm.log.
 */
export async function spawnVmm(
  argv: string[],
  dir: string,
  stdio: { stdin?: number; stdout?: number } = {},
): Promise<SpawnedVmm> {
  const out = await open(path.join(dir, VMM_FILES.log), 'w');
  let child: ChildProcess;
  try {
    child = spawn(argv[0]!, argv.slice(1), {
      cwd: dir,
      detached: true,
      stdio: [stdio.stdin ?? 'ignore', stdio.stdout ?? out.fd, out.fd],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    });
  } finally {
    await out.close();
  }
  const error = new Promise<never>((_, reject) => child.once('error', reject));
  error.catch(() => undefined);
  const pid = child.pid;
  const st = pid !== undefined ? readProcStat(pid) : null;
  if (pid === undefined || !st) {
    const err = await Promise.race([error, Promise.resolve(null)]).catch((e: Error) => e);
    throw new MvirtError('BOOT_FAILED', `${argv[0]} did not start${err ? `: ${err.message}` : ''}`);
  }
  return { child, pid, startTime: st.startTime };
}

export function attachError(
  reason: AttachFailureReason,
  message: string,
  cause?: unknown,
): MvirtError {
  return new MvirtError('HYPERVISOR_ERROR', message, { details: { reason }, cause });
}

function cwdOf(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return null;
  }
}

/** Ours: alive, same start time, this backend's program, running in `dir` with its API socket argument. */
export function identifyVmm(
  runtime: VmRuntime,
  dir: string,
  backend: string,
  isProgram: (argv: string[]) => boolean,
): Ownership {
  if (runtime.backend !== backend) return 'not-ours';
  const st = readProcStat(runtime.pid);
  if (!st || st.state === 'Z' || st.state === 'X') return 'gone';
  if (st.startTime !== runtime.startTime) return 'pid-reused';
  const argv = readCmdline(runtime.pid) ?? [];
  const cwd = cwdOf(runtime.pid);
  // A process of another user may hide its cwd: then it is not ours either.
  if (!isProgram(argv) || cwd === null || path.resolve(cwd) !== path.resolve(dir))
    return 'not-ours';
  return 'ours';
}

export function ownershipText(
  who: Exclude<Ownership, 'ours'>,
  rt: VmRuntime,
  dir: string,
  name: string,
): string {
  switch (who) {
    case 'gone':
      return `${name} process ${rt.pid} is gone`;
    case 'pid-reused':
      return `pid ${rt.pid} now belongs to another process (start time differs)`;
    default:
      return rt.backend !== name
        ? `runtime belongs to backend ${rt.backend}`
        : `pid ${rt.pid} is not the ${name} of ${dir}`;
  }
}

/** This backend's processes running in a folder under `vmRoot` that no runtime row names: SIGKILLed. */
export function disposeVmmOrphans(
  vmRoot: string,
  known: ReadonlySet<number>,
  isProgram: (argv: string[]) => boolean,
  log: Logger,
): number[] {
  const root = path.resolve(vmRoot) + path.sep;
  const ended: number[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || known.has(pid) || pid === process.pid) continue;
    const argv = readCmdline(pid);
    if (!argv || !isProgram(argv)) continue;
    const cwd = cwdOf(pid);
    if (!cwd || !(path.resolve(cwd) + path.sep).startsWith(root)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      ended.push(pid);
    } catch {
      // gone meanwhile
    }
  }
  if (ended.length > 0)
    log.warn({ pids: ended, vmRoot }, 'ended VMM processes that no VM record names');
  return ended;
}

/** The device layout a saved state depends on; paths are per VM and left out. */
export function deviceDigest(spec: StateSpec, backend: string): string {
  const layout = {
    backend,
    disks: spec.disks.map((d) => ({
      format: d.format ?? 'raw',
      readOnly: d.readOnly,
      volume: d.serial !== undefined,
    })),
    net: spec.network.mode,
    channel: spec.channel,
  };
  return createHash('sha256').update(JSON.stringify(layout)).digest('hex');
}

/** SavedState of a folder the VMM just wrote. */
export async function describeState(
  dir: string,
  backend: string,
  version: string,
  spec: StateSpec,
): Promise<SavedState> {
  const files: Record<string, number> = {};
  let bytes = 0;
  for (const f of await readdir(dir)) {
    const s = await stat(path.join(dir, f));
    if (!s.isFile()) continue;
    files[f] = s.size;
    bytes += s.size;
  }
  return {
    backend,
    version,
    machine: backend,
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    devices: deviceDigest(spec, backend),
    ram: 'stream',
    files,
    bytes,
  };
}

/** Why a VM launched with `spec` on this VMM could not resume `state`, or null. */
export function stateProblemOf(
  state: SavedState,
  spec: StateSpec,
  backend: string,
  version: string | null,
): string | null {
  if (state.backend !== backend)
    return `the state was saved by backend ${state.backend}, not ${backend}`;
  if (version !== null && state.version !== version)
    return `the state was saved by ${state.version}; this host runs ${version}`;
  if (state.memoryMiB !== spec.memoryMiB || state.vcpus !== spec.vcpus)
    return `the state is of a ${state.vcpus}-vCPU ${state.memoryMiB} MiB VM, not ${spec.vcpus} vCPUs ${spec.memoryMiB} MiB`;
  if (state.devices !== deviceDigest(spec, backend))
    return 'the VM has other devices than the saved state';
  return null;
}
