/**
 * Guest figures within what this VM has. The agent schema (protocol/agent.ts,
 * TELEMETRY_LIMITS) refuses figures no VM can report (negative, infinite,
 * beyond 1024 vCPUs or 16 TiB); what is left may still exceed this VM's
 * size, and is clamped here rather than refused: an honest agent overshoots
 * a little (CPU time sampled over a wall-clock interval that the guest's own
 * timer skews under TCG reads above 100 % per vCPU now and then), and the
 * rest of the sample is good. A hostile agent gains nothing either way: the
 * figure shown is the VM's ceiling, never its claim.
 */
import type { Telemetry } from '../../protocol/agent.js';

export interface VmSize {
  vcpus: number;
  memoryMiB: number;
}

/** `t` within the VM's size; `clamped` names the figures that were above it. */
export function clampTelemetry(
  t: Telemetry,
  size: VmSize | undefined,
): { t: Telemetry; clamped: string[] } {
  const clamped: string[] = [];
  const cap = (name: string, v: number, max: number): number => {
    if (v <= max) return v;
    clamped.push(name);
    return max;
  };
  const cpuPercent = size ? cap('cpuPercent', t.cpuPercent, 100 * size.vcpus) : t.cpuPercent;
  const memTotalMiB = size ? cap('memTotalMiB', t.memTotalMiB, size.memoryMiB) : t.memTotalMiB;
  const memUsedMiB = cap('memUsedMiB', t.memUsedMiB, memTotalMiB);
  let diskClamped = false;
  const disk = t.disk.map((d) => {
    if (d.usedBytes <= d.totalBytes) return d;
    diskClamped = true;
    return { ...d, usedBytes: d.totalBytes };
  });
  if (diskClamped) clamped.push('disk.usedBytes');
  if (clamped.length === 0) return { t, clamped };
  return { t: { ...t, cpuPercent, memTotalMiB, memUsedMiB, disk }, clamped };
}
