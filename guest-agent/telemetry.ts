/**
 * Guest figures from /proc (read through the platform). CPU is the busy share
 * of the time since the previous sample, summed over CPUs (100 = one CPU busy),
 * which is what the schema's 100×1024 bound allows for.
 */
import type { Telemetry } from '../protocol/agent.js';
import { listBlockDevices } from './block-devices.js';
import type { Platform } from './platform/types.js';

// Filesystems that hold no user data: not worth a disk entry.
const PSEUDO_FS = new Set([
  'proc',
  'sysfs',
  'devtmpfs',
  'devpts',
  'cgroup',
  'cgroup2',
  'securityfs',
  'debugfs',
  'tracefs',
  'mqueue',
  'hugetlbfs',
  'bpf',
  'pstore',
  'configfs',
  'fusectl',
  'binfmt_misc',
  'autofs',
  'rpc_pipefs',
  'nsfs',
  'efivarfs',
  'ramfs',
]);
const MAX_ENTRIES = 32;

interface CpuSample {
  busy: number;
  total: number;
}

export function parseCpu(stat: string): CpuSample | null {
  const line = stat.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) return null;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already in user)
  const total = v.slice(0, 8).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

export function countCpus(stat: string): number {
  return Math.max(1, stat.split('\n').filter((l) => /^cpu\d+\s/.test(l)).length);
}

export function parseMeminfo(text: string): { totalMiB: number; usedMiB: number } {
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  const total = kb('MemTotal');
  const avail = text.includes('MemAvailable:') ? kb('MemAvailable') : kb('MemFree');
  return { totalMiB: total / 1024, usedMiB: Math.max(0, total - avail) / 1024 };
}

export function parseLoadavg(text: string): { l1: number; l5: number; l15: number; procs: number } {
  const [a, b, c, rt] = text.trim().split(/\s+/);
  return {
    l1: Number(a) || 0,
    l5: Number(b) || 0,
    l15: Number(c) || 0,
    procs: Number(rt?.split('/')[1]) || 0,
  };
}

export function parseNetDev(text: string): Telemetry['net'] {
  const out: Telemetry['net'] = [];
  for (const line of text.split('\n').slice(2)) {
    const m = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const f = (m[2] as string).trim().split(/\s+/).map(Number);
    out.push({
      iface: (m[1] as string).slice(0, 32),
      rxBytes: f[0] || 0,
      rxPackets: f[1] || 0,
      txBytes: f[8] || 0,
      txPackets: f[9] || 0,
    });
  }
  return out.slice(0, MAX_ENTRIES);
}

/** Mount points worth reporting, from /proc/mounts: `/` first, pseudo filesystems left out. */
export function parseMounts(text: string): string[] {
  const seen = new Set<string>(['/']);
  for (const line of text.split('\n')) {
    const [, mnt, type] = line.split(' ');
    if (!mnt || !type || PSEUDO_FS.has(type)) continue;
    seen.add(mnt.replace(/\\040/g, ' '));
  }
  return [...seen].slice(0, MAX_ENTRIES);
}

export interface TelemetrySampler {
  sample(): Promise<Telemetry>;
}

export function createTelemetrySampler(platform: Platform): TelemetrySampler {
  let prev: CpuSample | null = null;
  const read = async (p: string) => (await platform.readText(p)) ?? '';

  return {
    async sample() {
      const [stat, mem, load, uptime, netdev, mounts] = (await Promise.all(
        [
          '/proc/stat',
          '/proc/meminfo',
          '/proc/loadavg',
          '/proc/uptime',
          '/proc/net/dev',
          '/proc/mounts',
        ].map(read),
      )) as [string, string, string, string, string, string];
      const cpu = parseCpu(stat);
      let cpuPercent = 0;
      if (cpu) {
        // First sample: average since boot (the counters start at boot).
        const base = prev ?? { busy: 0, total: 0 };
        const dt = cpu.total - base.total;
        if (dt > 0) cpuPercent = ((cpu.busy - base.busy) / dt) * 100 * countCpus(stat);
        prev = cpu;
      }
      const m = parseMeminfo(mem);
      const l = parseLoadavg(load);
      const disk: Telemetry['disk'] = [];
      for (const mount of parseMounts(mounts)) {
        const s = await platform.statfs(mount);
        if (s && s.totalBytes > 0) disk.push({ mount: mount.slice(0, 256), ...s });
      }
      return {
        at: platform.clock.now(),
        cpuPercent: Math.min(100 * 1024, Math.max(0, cpuPercent)),
        memUsedMiB: m.usedMiB,
        memTotalMiB: m.totalMiB,
        load1: l.l1,
        load5: l.l5,
        load15: l.l15,
        uptimeS: Number(uptime.split(' ')[0]) || platform.clock.uptimeS(),
        procs: l.procs,
        disk,
        net: parseNetDev(netdev),
        blockDevices: await listBlockDevices(platform, mounts),
      };
    },
  };
}
