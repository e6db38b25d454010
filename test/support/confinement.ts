/**
 * What /proc and the cgroup tree say about a (QEMU) process: its ids,
 * capabilities, seccomp mode, environment, open files and the limits of the
 * cgroups it sits in. Read the way an operator would check, independently of
 * the code that set them up.
 */
import { execFile as execFileCb } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseMountinfo } from '../../host/hypervisors/qemu/cgroup.js';

const execFile = promisify(execFileCb);

export interface ProcFacts {
  uids: number[];
  gids: number[];
  groups: number[];
  capEff: string;
  capPrm: string;
  capBnd: string;
  noNewPrivs: string;
  seccomp: string;
  environ: string;
  fds: string[];
}

export function procFacts(pid: number): ProcFacts {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (k: string) =>
    new RegExp(`^${k}:[ \\t]*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  const nums = (k: string) => field(k).split(/\s+/).filter(Boolean).map(Number);
  const fdDir = `/proc/${pid}/fd`;
  return {
    uids: nums('Uid'),
    gids: nums('Gid'),
    groups: nums('Groups'),
    capEff: field('CapEff'),
    capPrm: field('CapPrm'),
    capBnd: field('CapBnd'),
    noNewPrivs: field('NoNewPrivs'),
    seccomp: field('Seccomp'),
    environ: readFileSync(`/proc/${pid}/environ`, 'utf8'),
    fds: readdirSync(fdDir).map((fd) => {
      try {
        return readlinkSync(path.join(fdDir, fd));
      } catch {
        return '(closed)';
      }
    }),
  };
}

/** A process's cgroup limits, wherever its cgroups are (v2, or v1 per controller). */
export interface CgroupFacts {
  version: 'v2' | 'v1';
  memoryMax: number;
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  pidsMax: number;
  /** The process's memory cgroup folder. */
  memoryDir: string;
}

export function cgroupFacts(pid: number): CgroupFacts {
  const mounts = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
  const v1 = (ctrl: string): string | undefined => {
    const line = lines.find((l) => l.split(':')[1]?.split(',').includes(ctrl));
    const mount = mounts.find((m) => m.fstype === 'cgroup' && m.superOpts.includes(ctrl));
    return line && mount ? path.join(mount.point, line.split(':')[2]!) : undefined;
  };
  const read = (dir: string, file: string) => readFileSync(path.join(dir, file), 'utf8').trim();
  const mem = v1('memory');
  if (mem) {
    const cpu = v1('cpu')!;
    return {
      version: 'v1',
      memoryMax: Number(read(mem, 'memory.limit_in_bytes')),
      cpuQuotaUs: Number(read(cpu, 'cpu.cfs_quota_us')),
      cpuPeriodUs: Number(read(cpu, 'cpu.cfs_period_us')),
      pidsMax: Number(read(v1('pids')!, 'pids.max')),
      memoryDir: mem,
    };
  }
  const unified = lines.find((l) => l.startsWith('0::'))!.slice(3);
  const mount = mounts.find((m) => m.fstype === 'cgroup2')!;
  const dir = path.join(mount.point, unified);
  const [quota, period] = read(dir, 'cpu.max').split(' ');
  return {
    version: 'v2',
    memoryMax: Number(read(dir, 'memory.max')),
    cpuQuotaUs: Number(quota),
    cpuPeriodUs: Number(period),
    pidsMax: Number(read(dir, 'pids.max')),
    memoryDir: dir,
  };
}

/** Run `cat file` as uid/gid (no groups): the error text when denied, null when it could read. */
export async function readAs(uid: number, file: string): Promise<string | null> {
  try {
    await execFile('setpriv', [
      `--reuid=${uid}`,
      `--regid=${uid}`,
      '--clear-groups',
      '--',
      'cat',
      file,
    ]);
    return null;
  } catch (err) {
    return (err as { stderr?: string }).stderr ?? String(err);
  }
}
