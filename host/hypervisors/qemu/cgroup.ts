/**
 * One cgroup per QEMU process with CPU, memory and pids limits, under
 * `mvirt/<vm-id>` of the host's cgroup hierarchy. Written by hand against the
 * kernel's cgroup files: there is no maintained Node library for cgroups, and
 * the job is a handful of mkdir/writeFile/rmdir calls.
 *
 * cgroup v2 is the target. Hosts that still mount the v1 controllers (this
 * project's dev machines: a hybrid layout whose cgroup2 mount at
 * /sys/fs/cgroup/unified carries no controller, memory/cpu/pids each on its
 * own v1 hierarchy) get the same three limits through the v1 files; the
 * driver says which one it is, and system.info reports it.
 *
 * Joining: Node cannot run code between fork and exec, so QEMU is started
 * paused (`-S`) and its pid is written to `cgroup.procs` right after spawn,
 * before QMP `cont` lets the first guest instruction run. Memory QEMU touched
 * before the move stays charged where it was (a few MiB of its start-up);
 * everything the guest does is charged to the VM's cgroup.
 */
import { readFileSync } from 'node:fs';
import { access, mkdir, readdir, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface CgroupLimits {
  vcpus: number;
  memoryBytes: number;
  pids: number;
}

export interface VmCgroup {
  /** Absolute cgroup folders this VM's process sits in (one for v2, one per controller for v1). */
  readonly dirs: readonly string[];
  join(pid: number): Promise<void>;
  /** rmdir; true when gone (a cgroup with a live process cannot be removed). */
  remove(): Promise<boolean>;
}

export interface CgroupDriver {
  readonly version: 'v2' | 'v1';
  create(group: string, name: string, limits: CgroupLimits): Promise<VmCgroup>;
  /** The VM cgroup of that name, for removal after a daemon restart. */
  existing(group: string, name: string): VmCgroup;
  /** Names of the VM cgroups of a group. */
  list(group: string): Promise<string[]>;
}

export type CgroupProbe = { driver: CgroupDriver } | { driver: null; reason: string };

/** CFS period: QEMU's vCPU threads get `vcpus` periods of CPU per period. */
const CPU_PERIOD_US = 100_000;
const PARENT = 'mvirt';
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

interface Mount {
  point: string;
  fstype: string;
  superOpts: string[];
}

/** /proc/self/mountinfo: mount point is field 5; fstype and super options follow ` - `. */
export function parseMountinfo(text: string): Mount[] {
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const point = left.split(' ')[4];
    const [fstype, , opts] = right.split(' ');
    if (!point || !fstype) continue;
    out.push({
      point: point.replace(/\\040/g, ' '),
      fstype,
      superOpts: (opts ?? '').split(','),
    });
  }
  return out;
}

const write = (dir: string, file: string, value: string) => writeFile(path.join(dir, file), value);

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

function checkName(name: string): string {
  if (!NAME.test(name)) throw new Error(`bad cgroup name ${JSON.stringify(name)}`);
  return name;
}

function vmCgroup(dirs: string[]): VmCgroup {
  return {
    dirs,
    async join(pid) {
      for (const d of dirs) await write(d, 'cgroup.procs', String(pid));
    },
    async remove() {
      let gone = true;
      for (const d of dirs) {
        try {
          await rmdir(d);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') gone = false;
        }
      }
      return gone;
    },
  };
}

async function listDirs(parent: string): Promise<string[]> {
  try {
    const entries = await readdir(parent, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}

function v2Driver(mount: string): CgroupDriver {
  const parent = path.join(mount, PARENT);
  const ready = new Map<string, Promise<void>>();
  // Controllers are enabled level by level (mount → mvirt → group); only the
  // leaves hold processes (v2's no-internal-processes rule).
  const prepare = (group: string) => {
    let p = ready.get(group);
    if (!p) {
      p = (async () => {
        const g = path.join(parent, checkName(group));
        await mkdir(g, { recursive: true });
        for (const d of [mount, parent, g])
          await write(d, 'cgroup.subtree_control', '+cpu +memory +pids');
      })();
      ready.set(group, p);
    }
    return p;
  };
  return {
    version: 'v2',
    async create(group, name, limits) {
      await prepare(group);
      const dir = path.join(parent, group, checkName(name));
      await mkdir(dir, { recursive: true });
      await write(dir, 'memory.max', String(limits.memoryBytes));
      // No swap: a guest's memory beyond the limit is the guest's OOM, not the host's swap.
      if (await exists(path.join(dir, 'memory.swap.max'))) await write(dir, 'memory.swap.max', '0');
      await write(dir, 'cpu.max', `${limits.vcpus * CPU_PERIOD_US} ${CPU_PERIOD_US}`);
      await write(dir, 'pids.max', String(limits.pids));
      return vmCgroup([dir]);
    },
    existing: (group, name) => vmCgroup([path.join(parent, checkName(group), checkName(name))]),
    list: (group) => listDirs(path.join(parent, checkName(group))),
  };
}

function v1Driver(mounts: { memory: string; cpu: string; pids: string }): CgroupDriver {
  const parents = {
    memory: path.join(mounts.memory, PARENT),
    cpu: path.join(mounts.cpu, PARENT),
    pids: path.join(mounts.pids, PARENT),
  };
  const dirsOf = (group: string, name: string) => {
    const n = path.join(checkName(group), checkName(name));
    return {
      memory: path.join(parents.memory, n),
      cpu: path.join(parents.cpu, n),
      pids: path.join(parents.pids, n),
    };
  };
  return {
    version: 'v1',
    async create(group, name, limits) {
      const d = dirsOf(group, name);
      for (const dir of Object.values(d)) await mkdir(dir, { recursive: true });
      await write(d.memory, 'memory.limit_in_bytes', String(limits.memoryBytes));
      // memory+swap to the same figure: no swap beyond the limit (set after limit_in_bytes).
      if (await exists(path.join(d.memory, 'memory.memsw.limit_in_bytes'))) {
        await write(d.memory, 'memory.memsw.limit_in_bytes', String(limits.memoryBytes));
      }
      await write(d.cpu, 'cpu.cfs_period_us', String(CPU_PERIOD_US));
      await write(d.cpu, 'cpu.cfs_quota_us', String(limits.vcpus * CPU_PERIOD_US));
      await write(d.pids, 'pids.max', String(limits.pids));
      return vmCgroup(Object.values(d));
    },
    existing: (group, name) => vmCgroup(Object.values(dirsOf(group, name))),
    list: (group) => listDirs(path.join(parents.memory, checkName(group))),
  };
}

/**
 * Which cgroup hierarchy can confine a VM here: v2 when a cgroup2 mount offers
 * cpu, memory and pids; else v1 when each of them is mounted; else null and why.
 */
export function probeCgroups(mountinfo?: string): CgroupProbe {
  let text = mountinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/mountinfo', 'utf8');
    } catch (err) {
      return {
        driver: null,
        reason: `cannot read /proc/self/mountinfo: ${(err as Error).message}`,
      };
    }
  }
  const mounts = parseMountinfo(text);
  const want = ['cpu', 'memory', 'pids'];
  for (const m of mounts.filter((m) => m.fstype === 'cgroup2')) {
    let controllers: string[] = [];
    try {
      controllers = readFileSync(path.join(m.point, 'cgroup.controllers'), 'utf8')
        .trim()
        .split(/\s+/);
    } catch {
      continue;
    }
    if (want.every((c) => controllers.includes(c))) return { driver: v2Driver(m.point) };
  }
  const v1 = (c: string) =>
    mounts.find((m) => m.fstype === 'cgroup' && m.superOpts.includes(c))?.point;
  const memory = v1('memory');
  const cpu = v1('cpu');
  const pids = v1('pids');
  if (memory && cpu && pids) return { driver: v1Driver({ memory, cpu, pids }) };
  return {
    driver: null,
    reason: 'no cgroup hierarchy offers the cpu, memory and pids controllers',
  };
}
