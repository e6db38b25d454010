/**
 * Job groups: each job in its own cgroup v2 under `jobs/`, apart from the
 * agent's `agent/` (both made by the µOS rcS; agent-run moves the agent in
 * before it starts, so the agent's pages are charged to `agent/`).
 *
 * What it buys, measured under TCG with a 256 MiB guest and a job allocating
 * past it: without groups the kernel reclaims the agent's own pages (its
 * ~80 MB binary is file-backed on the squashfs root) long before it kills
 * anything, the agent stalls for a minute or more, misses the host's
 * keepalives and the job ends `lost`, not OOM-killed. With `jobs/` capped below
 * the VM's memory, the allocation hits the cap, the cgroup's own OOM killer
 * ends the job at once (reclaim under a cgroup's cap takes only that cgroup's
 * pages) and the agent never notices. An OOM kill is also counted per job
 * (`memory.events`), so one job's OOM no longer marks every job OOM-killed.
 *
 * The agent's usage is also protected against the rest of the guest, but
 * best-effort (`memory.low`) and never more than half the VM: with a hard
 * `memory.min` of its whole usage plus headroom, a 128 MiB VM (80 MiB for
 * the kernel to give out, 51 of them the agent's) had nothing left to
 * reclaim, and the agent itself stalled with its first jobs.
 */
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { JobLimits, JobUsage } from '../../protocol/agent.js';
import type { JobGroup, LimitedJobGroup } from './types.js';

const MiB = 1024 * 1024;
/**
 * Room for the agent to grow past its usage when the groups are sized. The
 * agent's usage, read in guests of the default image: 51 MiB in a 128 MiB VM
 * (MemTotal 80 MiB), 73 MiB at 256 (MemTotal 206), 80 MiB at 1024; about 50
 * of it is the pages of its own binary, the rest its heap.
 */
export const AGENT_HEADROOM_BYTES = 16 * MiB;
/** Kept free beyond `jobs/` and the agent's headroom: what the kernel allocates
 *  as jobs run (page tables, slab), its reclaim watermarks (kswapd wakes
 *  under ~3 MiB free in a 256 MiB VM) and the µOS's other processes. */
export const SYSTEM_RESERVE_BYTES = 8 * MiB;

export interface GroupSizes {
  /** `agent/memory.low`: the agent's pages reclaimed only when nothing else can be. */
  agentLow: number;
  /** `jobs/memory.max`: what all jobs together may use. */
  jobsMax: number;
}

/**
 * Pure arithmetic, so it is tested without a kernel. The agent's protection
 * is at most half the VM. Jobs get the memory that is free once the agent is
 * up, less the agent's room to grow and the system reserve: what they take
 * then never has to be reclaimed from anyone, so a job at its cap meets its
 * group's OOM killer before the guest as a whole runs short. At least a
 * quarter of the VM, so a small VM still runs jobs (there the agent's
 * protection is best-effort).
 *
 * Sized from MemTotal instead (MemTotal − the agent's protection − the
 * reserve: 112 MiB of a 256 MiB VM), the kernel's own ~30 MiB (slab, page
 * tables, stacks, per-cpu) was left out, and a job allocating to that cap
 * drove the whole guest into reclaim first: kswapd and direct reclaim
 * scanned 40k pages, the agent's `memory.low` was breached 302 times and its
 * binary's pages refaulted 5k times before the OOM kill, 4.8 s on a quiet
 * host; under load in CI the kill never came within 300 s.
 */
export function sizeGroups(memTotal: number, memFree: number, agentCurrent: number): GroupSizes {
  const agentLow = Math.min(agentCurrent + AGENT_HEADROOM_BYTES, Math.floor(memTotal / 2));
  const spare = memFree - AGENT_HEADROOM_BYTES - SYSTEM_RESERVE_BYTES;
  const jobsMax = Math.max(
    Math.floor(memTotal / 4),
    Math.min(spare, memTotal - agentLow - SYSTEM_RESERVE_BYTES),
  );
  return { agentLow, jobsMax };
}

export interface JobGroups {
  /**
   * A job's group with its limits set (none: `{}`), made before the job
   * starts (its process enters it as it starts, so nothing it allocates
   * escapes the cap). Throws, saying why, where there are no groups or the
   * limits cannot be enforced.
   */
  limited(limits: JobLimits): Promise<LimitedJobGroup>;
}

/** cpu.max's period: 100 ms, the kernel's default. */
const CPU_PERIOD_US = 100_000;

export interface JobGroupsOptions {
  /** Where cgroup v2 is mounted. */
  root?: string | undefined;
  meminfoPath?: string;
}

export function createJobGroups(o: JobGroupsOptions = {}): JobGroups {
  const root = o.root ?? '/sys/fs/cgroup';
  const jobsDir = path.join(root, 'jobs');
  let ready: Promise<boolean> | null = null;
  let serial = 0;

  const read = (p: string) => readFile(p, 'utf8').catch(() => null);
  /**
   * On a job's path (its group made, entered, read as it ends) the files are
   * read and written synchronously: cgroupfs answers from memory, while each
   * fs/promises call is a hop through libuv's thread pool, and under TCG the
   * hops of one unlimited job (mkdir, two writeFiles of open/write/close
   * each, three reads, rmdir) took 100-200 ms of its round trip (agent
   * timings, 2026-12-07).
   */
  const readNow = (p: string): string | null => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return null;
    }
  };
  const setup = async (): Promise<boolean> => {
    const current = await read(path.join(root, 'agent', 'memory.current'));
    const meminfo = (await read(o.meminfoPath ?? '/proc/meminfo')) ?? '';
    const total = /^MemTotal:\s+(\d+) kB$/m.exec(meminfo);
    const free = /^MemFree:\s+(\d+) kB$/m.exec(meminfo);
    const agentCurrent = Number(current);
    if (current === null || !Number.isSafeInteger(agentCurrent) || !total || !free) return false;
    const sizes = sizeGroups(Number(total[1]) * 1024, Number(free[1]) * 1024, agentCurrent);
    try {
      await writeFile(path.join(root, 'agent', 'memory.low'), String(sizes.agentLow));
      await writeFile(path.join(jobsDir, 'memory.max'), String(sizes.jobsMax));
      for (const e of await readdir(jobsDir, { withFileTypes: true }))
        if (e.isDirectory()) leftovers.add(path.join(jobsDir, e.name));
      return true;
    } catch {
      return false;
    }
  };

  /**
   * Groups that could not be removed yet (an ended job's stragglers outlived
   * it; at start, whatever an earlier agent left, its spare included): tried
   * again whenever a spare is made, and gone once empty (rmdir refuses a
   * group that holds processes). Only these, so no listing of jobs/.
   */
  const leftovers = new Set<string>();
  const sweep = () => {
    for (const dir of leftovers) {
      try {
        rmdirSync(dir);
        leftovers.delete(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') leftovers.delete(dir);
      }
    }
  };

  /** Remove an ended job's group, or keep it for the sweep while something still holds it. */
  const removeGroup = (dir: string) => {
    try {
      rmdirSync(dir);
    } catch {
      leftovers.add(dir);
    }
  };

  let jobControllers: Promise<string[]> | null = null;

  /**
   * A new, empty group. Numbered, not named after its job: groups are made
   * ahead (below), and cgroup v2 cannot rename one. A number an earlier
   * agent left is skipped.
   */
  const fresh = (): string => {
    for (;;) {
      const dir = path.join(jobsDir, `g${++serial}`);
      try {
        mkdirSync(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw err;
      }
      try {
        // The whole job dies together on OOM: no half-killed pipelines.
        writeFileSync(path.join(dir, 'memory.oom.group'), '1');
      } catch (err) {
        leftovers.add(dir);
        throw err;
      }
      return dir;
    }
  };

  /**
   * One group made ahead while the agent is idle (after each job's exit has
   * gone out; not before the first job, which sizes the groups from the
   * memory free then), so that a job only enters it as it starts: the
   * mkdir and the memory.oom.group write took ~3 ms of a /bin/true round
   * trip under TCG (agent timings, 2026-12-07). A job that finds none
   * (the first of several at once) makes its own.
   */
  let spare: string | null = null;
  let refilling = false;
  const take = (): string => {
    const dir = spare ?? fresh();
    spare = null;
    return dir;
  };
  const refill = () => {
    if (refilling) return;
    refilling = true;
    setImmediate(() => {
      refilling = false;
      sweep();
      try {
        spare ??= fresh();
      } catch {
        // Made on demand by the next job, which then says why it cannot be.
      }
    });
  };

  const groupAt = (dir: string): JobGroup => ({
    async oomKills() {
      const events = readNow(path.join(dir, 'memory.events'));
      const m = events && /^oom_kill (\d+)$/m.exec(events);
      return m ? Number(m[1]) : null;
    },
    async usage(): Promise<JobUsage | null> {
      const cpu = /^usage_usec (\d+)$/m.exec(readNow(path.join(dir, 'cpu.stat')) ?? '');
      const peak = Number(readNow(path.join(dir, 'memory.peak')));
      if (!cpu || !Number.isSafeInteger(peak) || peak < 0) return null;
      return { cpuMs: Math.round(Number(cpu[1]) / 1000), peakMemoryBytes: peak };
    },
    async remove() {
      removeGroup(dir);
      refill();
    },
  });

  return {
    async limited(limits) {
      ready ??= setup();
      if (!(await ready))
        throw new Error('per-job limits need cgroup v2 with memory groups, which this guest lacks');
      // What jobs/ hands its children (rcS enables memory, pids and, where
      // the kernel has it, cpu): a limit of a controller not there cannot bind.
      // Read once: rcS sets it before the agent starts and nothing changes it.
      const limited = limits.cpus !== undefined || limits.memoryMiB !== undefined;
      const controllers = limited
        ? await (jobControllers ??= read(path.join(jobsDir, 'cgroup.subtree_control')).then((t) =>
            (t ?? '').trim().split(/\s+/),
          ))
        : [];
      if (limits.cpus !== undefined && !controllers.includes('cpu'))
        throw new Error(
          "this guest cannot limit CPU per job: its kernel's cgroup v2 has no cpu controller for jobs (CONFIG_CFS_BANDWIDTH)",
        );
      if (limits.memoryMiB !== undefined && !controllers.includes('memory'))
        throw new Error('this guest cannot limit memory per job: no memory controller for jobs');
      const dir = take();
      try {
        if (limits.memoryMiB !== undefined)
          await writeFile(path.join(dir, 'memory.max'), String(limits.memoryMiB * MiB));
        if (limits.cpus !== undefined) {
          const quota = Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US));
          await writeFile(path.join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
        }
      } catch (err) {
        removeGroup(dir);
        throw err;
      }
      return { ...groupAt(dir), procs: path.join(dir, 'cgroup.procs') };
    },
  };
}
