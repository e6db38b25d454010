/**
 * Test/bench helpers for µOS images: boot a built image under QEMU TCG the way
 * its manifest says, watch the serial console for markers, and keep the
 * machine's other core busy.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bootFiles, readManifest, type Manifest } from '../images/manifest.js';

export interface BootOptions {
  memMiB?: number;
  /** Appended to the manifest's cmdline. */
  cmdline?: string;
  /** Replace the manifest's cmdline entirely. */
  replaceCmdline?: string;
  machine?: Manifest['boot']['machine'];
  /** Attach the root disk (default true). */
  disk?: boolean;
  /** Where the agent port's host side writes (a file: always "connected"). */
  agentOut?: string;
  /** QEMU -cpu model (default: QEMU's, qemu64 under TCG). */
  cpu?: string;
  /** A cloud-init seed ISO (host/network/seed.ts), attached read-only after the root disk. */
  seed?: string;
}

export interface BootedVm {
  proc: ChildProcess;
  spawnedAt: number;
  manifest: Manifest;
  /** Serial console output so far. */
  output(): string;
  /** Resolve with the match once `re` appears on the console (rejects on exit or timeout). */
  waitFor(re: RegExp, timeoutMs: number): Promise<{ match: RegExpMatchArray; wallMs: number }>;
  /** Resolve with QEMU's exit code. */
  exited(timeoutMs: number): Promise<number | null>;
  kill(): Promise<void>;
}

/**
 * The host's TSC frequency in kHz. Under TCG the guest reads the host TSC, and
 * on -M microvm (no HPET, no ACPI PM timer) the kernel can only calibrate it
 * against the PIT, which fails when the host is loaded and then hangs the boot.
 * `tsc_early_khz=` skips that calibration.
 */
export function hostTscKhz(): number | null {
  try {
    const r = spawnSync('dmesg', [], { encoding: 'utf8' });
    const m =
      /tsc: Refined TSC clocksource calibration: ([\d.]+) MHz/.exec(r.stdout) ??
      /tsc: Detected ([\d.]+) MHz processor/.exec(r.stdout) ??
      /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    return m?.[1] === undefined ? null : Math.round(Number(m[1]) * 1000);
  } catch {
    return null;
  }
}

export function qemuArgs(imageDir: string, m: Manifest, o: BootOptions = {}): string[] {
  const f = bootFiles(imageDir, m);
  const machine = o.machine ?? m.boot.machine;
  const mmio = machine === 'microvm';
  let cmdline = o.replaceCmdline ?? [m.cmdline, o.cmdline ?? ''].join(' ').trim();
  const khz = mmio && !cmdline.includes('tsc_early_khz=') ? hostTscKhz() : null;
  if (khz !== null) cmdline += ` tsc_early_khz=${khz}`;
  const args = [
    '-accel',
    'tcg',
    '-M',
    machine,
    ...(o.cpu === undefined ? [] : ['-cpu', o.cpu]),
    '-m',
    String(o.memMiB ?? 128),
    '-smp',
    '1',
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-no-reboot',
    '-serial',
    'stdio',
    '-kernel',
    f.kernel,
    '-initrd',
    f.initrd,
    '-append',
    cmdline,
  ];
  if (o.disk !== false)
    args.push(
      '-drive',
      `file=${f.disk},if=none,id=root,format=raw,readonly=on`,
      '-device',
      `${mmio ? 'virtio-blk-device' : 'virtio-blk-pci'},drive=root`,
    );
  if (o.seed !== undefined)
    args.push(
      '-drive',
      `file=${o.seed},if=none,id=seed,format=raw,readonly=on`,
      '-device',
      `${mmio ? 'virtio-blk-device' : 'virtio-blk-pci'},drive=seed`,
    );
  args.push(
    '-device',
    mmio ? 'virtio-serial-device' : 'virtio-serial-pci',
    '-chardev',
    `file,id=agent,path=${o.agentOut ?? '/dev/null'}`,
    '-device',
    `virtserialport,chardev=agent,name=${m.boot.agentPort}`,
  );
  return args;
}

export async function bootImage(imageDir: string, o: BootOptions = {}): Promise<BootedVm> {
  const manifest = await readManifest(imageDir);
  const spawnedAt = performance.now();
  const proc = spawn('qemu-system-x86_64', qemuArgs(imageDir, manifest, o), {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let exitCode: number | null | undefined;
  const listeners = new Set<() => void>();
  const notify = (): void => listeners.forEach((l) => l());
  proc.stdout?.on('data', (b: Buffer) => {
    out += b.toString('latin1').replace(/\r/g, '');
    notify();
  });
  proc.stderr?.on('data', (b: Buffer) => {
    out += b.toString('latin1');
  });
  proc.on('exit', (code) => {
    exitCode = code;
    notify();
  });
  const waitUntil = <T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const done = (): void => {
        const v = check();
        if (v !== undefined) {
          cleanup();
          resolve(v);
        } else if (exitCode !== undefined) {
          cleanup();
          reject(
            new Error(`QEMU exited (${exitCode}) before ${what}; console:\n${out.slice(-3000)}`),
          );
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; console:\n${out.slice(-3000)}`,
          ),
        );
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        listeners.delete(done);
      };
      listeners.add(done);
      done();
    });
  return {
    proc,
    spawnedAt,
    manifest,
    output: () => out,
    waitFor: (re, timeoutMs) =>
      waitUntil(
        () => {
          // Only complete lines: a marker split across two reads must not match half a number.
          const match = out.slice(0, out.lastIndexOf('\n') + 1).match(re);
          return match === null ? undefined : { match, wallMs: performance.now() - spawnedAt };
        },
        timeoutMs,
        String(re),
      ),
    exited: async (timeoutMs) => {
      // waitUntil rejects once QEMU has exited and check() is undefined: check exitCode first.
      return new Promise((resolve, reject) => {
        if (exitCode !== undefined) return resolve(exitCode);
        const timer = setTimeout(
          () =>
            reject(
              new Error(`QEMU still running after ${timeoutMs} ms; console:\n${out.slice(-3000)}`),
            ),
          timeoutMs,
        );
        proc.once('exit', (code) => {
          clearTimeout(timer);
          resolve(code);
        });
      });
    },
    kill: async () => {
      if (exitCode !== undefined) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    },
  };
}

/** Keep one core busy (the design's robustness condition). Returns a stop function. */
export function busyCore(): () => Promise<void> {
  const p = spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' });
  return async () => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  };
}

/**
 * A stand-in for mvirt-agent (a shell script; the real agent is built by
 * another issue): prints a marker with its restart count, exits once to prove
 * init restarts it, then reports the port and hostname and powers off.
 */
export const STANDIN_AGENT = `#!/bin/sh
read -r u _ </proc/uptime
n=$(cat /run/mvirt/agent-restarts 2>/dev/null || echo 0)
echo "MVIRT-MARKER agent $u restarts=$n"
if [ "$n" = 0 ] && grep -q 'mvirt.test=respawn' /proc/cmdline; then exit 3; fi
for p in /sys/class/virtio-ports/*; do echo "STANDIN port $(cat "$p/name") /dev/\${p##*/} $(test -c "/dev/\${p##*/}" && echo chardev)"; done
echo "STANDIN hostname $(hostname) init-uptime $(cat /run/mvirt/init-uptime)"
echo "STANDIN mounts $(grep -c -E ' / overlay | /tmp tmpfs | /dev/pts devpts ' /proc/mounts)"
if [ -f /run/mvirt/seed/meta-data ]; then echo "STANDIN seed $(head -n 1 /run/mvirt/seed/meta-data) token=$(cat /run/mvirt/token 2>/dev/null)"; fi
if grep -q 'mvirt.test=' /proc/cmdline; then poweroff; fi
exec sleep 100000
`;

/** A temp folder with the stand-in agent; remove it with the returned function. */
export async function standinAgent(): Promise<{
  dir: string;
  agent: string;
  cleanup: () => Promise<void>;
}> {
  const dir = await mkdtemp(path.join(tmpdir(), 'mvirt-image-test-'));
  const agent = path.join(dir, 'agent.sh');
  await writeFile(agent, STANDIN_AGENT, { mode: 0o755 });
  return { dir, agent, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** The default recipe's content with the agent replaced (for tests before the real agent exists). */
export async function testRecipe(
  dir: string,
  agent: string,
  overrides: Record<string, unknown> = {},
): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  const { DEFAULT_RECIPE } = await import('../images/paths.js');
  const base = JSON.parse(await readFile(DEFAULT_RECIPE, 'utf8')) as Record<string, unknown>;
  const recipe = { ...base, name: 'test-default', agent, ...overrides };
  const file = path.join(dir, `${String(recipe.name)}.json`);
  await writeFile(file, JSON.stringify(recipe, null, 2));
  return file;
}
