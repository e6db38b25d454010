/**
 * The host's own figures for `status`, the roll-ups and /metrics: CPU busy
 * share since the previous sample (from os.cpus() tick counters), memory as
 * the kernel counts it available (MemAvailable, not just free pages), load,
 * and mvirtd's own CPU and resident memory.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { HostFigures } from '../../protocol/metrics.js';

export interface HostSampler {
  /** Figures since the previous call (a call within minIntervalMs returns the previous figures). */
  sample(): HostFigures;
}

interface Ticks {
  busy: number;
  total: number;
}

function cpuTicks(): Ticks {
  let busy = 0;
  let total = 0;
  for (const c of os.cpus()) {
    const t = c.times;
    const all = t.user + t.nice + t.sys + t.idle + t.irq;
    total += all;
    busy += all - t.idle;
  }
  return { busy, total };
}

/** MemAvailable from /proc/meminfo in MiB, or null when it cannot be read (not Linux). */
export function memAvailableMiB(meminfo: string): number | null {
  const m = /^MemAvailable:\s+(\d+)\s*kB/m.exec(meminfo);
  return m ? Number(m[1]) / 1024 : null;
}

export function createHostSampler(
  o: {
    minIntervalMs?: number;
    /** Each fresh sample, once (the roll-ups): a cached answer is not a new sample. */
    onSample?: (f: HostFigures) => void;
  } = {},
): HostSampler {
  const minInterval = o.minIntervalMs ?? 1000;
  const cpus = Math.max(1, os.cpus().length);
  let prevTicks = cpuTicks();
  let prevUsage = process.cpuUsage();
  let prevAt = performance.now();
  let last: HostFigures | null = null;

  return {
    sample() {
      const at = performance.now();
      if (last && at - prevAt < minInterval) return last;
      const ticks = cpuTicks();
      const usage = process.cpuUsage();
      const dt = ticks.total - prevTicks.total;
      const cpuPercent = dt > 0 ? ((ticks.busy - prevTicks.busy) / dt) * 100 * cpus : 0;
      const wallUs = (at - prevAt) * 1000;
      const daemonUs = usage.user - prevUsage.user + (usage.system - prevUsage.system);
      prevTicks = ticks;
      prevUsage = usage;
      prevAt = at;
      const totalMiB = os.totalmem() / (1024 * 1024);
      let availMiB: number | null = null;
      try {
        availMiB = memAvailableMiB(readFileSync('/proc/meminfo', 'utf8'));
      } catch {
        // not Linux: free pages are the best we have
      }
      const [l1, l5, l15] = os.loadavg() as [number, number, number];
      last = {
        cpuPercent: Math.max(0, cpuPercent),
        memUsedMiB: Math.max(0, totalMiB - (availMiB ?? os.freemem() / (1024 * 1024))),
        memTotalMiB: totalMiB,
        load1: l1,
        load5: l5,
        load15: l15,
        uptimeS: os.uptime(),
        daemon: {
          cpuPercent: wallUs > 0 ? Math.max(0, (daemonUs / wallUs) * 100) : 0,
          rssMiB: process.memoryUsage.rss() / (1024 * 1024),
        },
      };
      o.onSample?.(last);
      return last;
    },
  };
}
