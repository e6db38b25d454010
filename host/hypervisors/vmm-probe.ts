/**
 * Can a KVM-only VMM (cloud-hypervisor, Firecracker) run here? Its program
 * must be installed and answer `--version`, and /dev/kvm must be there and
 * open to mvirtd for reading and writing: neither VMM has a software
 * fallback. What the probe cannot see is a /dev/kvm whose vCPUs never run
 * (nested virtualisation off, as on the dev machines); such a VM is caught by
 * the boot timeout, and the QEMU backend's probe (qemu/probe.ts) reports it.
 */
import { execFile } from 'node:child_process';
import { constants, accessSync } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';
import type { ProbeResult } from './types.js';

export interface VmmProbeOptions {
  /** What the user configured: a name looked up on PATH, or a path. */
  binary: string;
  /** The program's name in messages (`cloud-hypervisor`). */
  name: string;
  /** The option the user sets to point elsewhere (`--cloud-hypervisor-bin`). */
  option: string;
  kvmPath: string;
  timeoutMs: number;
}

/** An absolute path for `program` (PATH lookup for bare names), or null when not installed. */
export function findProgram(program: string, env = process.env): string | null {
  const candidates = program.includes('/')
    ? [path.resolve(program)]
    : (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':').map((d) => path.join(d, program));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return null;
}

function versionOf(binary: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(binary, ['--version'], { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) return reject(err);
      resolve((stdout || stderr).split('\n').find((l) => l.trim() !== '') ?? '');
    });
  });
}

export async function probeVmm(
  o: VmmProbeOptions,
): Promise<ProbeResult & { binary: string | null }> {
  const binary = findProgram(o.binary);
  if (!binary) {
    return {
      available: false,
      accel: null,
      binary: null,
      reason: `${o.name} is not installed (${o.binary} not found${o.binary.includes('/') ? '' : ' on PATH'}; set ${o.option} or see README "cloud-hypervisor and Firecracker")`,
      details: { missing: 'binary' },
    };
  }
  let version: string;
  try {
    version = (await versionOf(binary, o.timeoutMs)).trim();
  } catch (err) {
    return {
      available: false,
      accel: null,
      binary,
      reason: `${binary} --version failed: ${(err as Error).message}`,
      details: { missing: 'binary' },
    };
  }
  try {
    await access(o.kvmPath, constants.R_OK | constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return {
      available: false,
      accel: null,
      binary,
      version,
      reason:
        code === 'ENOENT'
          ? `${o.name} needs KVM and ${o.kvmPath} does not exist`
          : `${o.name} needs KVM and ${o.kvmPath} is not open to mvirtd (${code}); add mvirtd's user to the kvm group`,
      details: { missing: 'kvm' },
    };
  }
  return { available: true, accel: 'kvm', binary, version };
}
