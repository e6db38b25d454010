/**
 * Does QEMU really run guest code, and with which accelerator? `/dev/kvm` can
 * exist while a vCPU never runs a real guest (nested virtualisation off), so
 * we do not trust ioctls or `-accel help`: we boot a 64 KiB firmware that
 * does what a kernel's entry does — build identity page tables, enter 64-bit
 * long mode with paging — and then writes to an isa-debug-exit port. QEMU
 * exits with status 3: proof that a vCPU executed 64-bit paged code. An
 * accelerator that cannot hangs instead and is killed after a timeout.
 *
 * Measured on the dev machines (nested KVM half-working): a real-mode-only
 * probe PASSED under KVM (SeaBIOS even runs) while a Linux kernel hangs right
 * after the real-mode setup code — hence the long-mode test.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { QemuAccel } from './args.js';
import type { HypervisorConfinement, ProbeResult } from '../types.js';

export interface AccelProbe {
  accel: QemuAccel;
  available: boolean;
  reason?: string;
  /** How long the probe took. */
  ms: number;
}

export interface QemuProbe {
  binary: string;
  /** `qemu-system-x86_64 -version` first line; null when the binary did not run. */
  version: string | null;
  kvm: AccelProbe;
  tcg: AccelProbe;
  /** The accelerator launches use: kvm when it works, else tcg, else null. */
  accel: QemuAccel | null;
}

const DEBUG_EXIT_PORT = 0xf4;
/** isa-debug-exit exits with (value << 1) | 1; we write 1. */
export const PROBE_EXIT_STATUS = 3;

/**
 * The firmware's code, at image offset 0 = physical 0xF0000 (the low mirror
 * of the BIOS). Assembled with GNU as (`.intel_syntax noprefix`, `.code16`):
 *
 *     cli; xor ax,ax; mov ds,ax; mov es,ax
 *     mov di,0x1000; mov cx,0x1800; cld; rep stosw   ; zero 0x1000-0x3fff
 *     mov dword [0x1000],0x2003   ; PML4[0] -> PDPT
 *     mov dword [0x2000],0x3003   ; PDPT[0] -> PD
 *     mov dword [0x3000],0x83     ; PD[0]: 2 MiB identity page
 *     mov eax,0x20; mov cr4,eax   ; PAE
 *     mov eax,0x1000; mov cr3,eax
 *     mov ecx,0xC0000080; rdmsr; or eax,0x100; wrmsr  ; EFER.LME
 *     data32 lgdt cs:[gdtr]
 *     mov eax,cr0; or eax,0x80000001; mov cr0,eax      ; PE + PG: long mode
 *     jmp dword 0x08:0xF0068                           ; 64-bit code segment
 *   long64 (.code64, 0x68): mov al,1; out 0xf4,al; 1: hlt; jmp 1b
 *   gdt (0x70): null, 0x00209A0000000000 (64-bit code)
 *   gdtr (0x80): limit 15, base 0xF0070
 */
const PROBE_CODE_HEX =
  'fa31c08ed88ec0bf0010b90018fcf3ab66c70600100320000066c70600200330000066c706003083' +
  '00000066b8200000000f22e066b8001000000f22d866b9800000c00f32660d000100000f302e660f' +
  '011680000f20c0660d010000800f22c066ea68000f000800b001e6f4f4ebfd900000000000000000' +
  '00000000009a20000f0070000f00';

/**
 * 64 KiB BIOS image: the code above at offset 0, the reset vector (last 16
 * bytes, F000:FFF0 in real mode) a far jump to F000:0000, everything else hlt.
 */
export function probeBios(): Buffer {
  const bios = Buffer.alloc(64 * 1024, 0xf4);
  Buffer.from(PROBE_CODE_HEX, 'hex').copy(bios, 0);
  Buffer.from([0xea, 0x00, 0x00, 0x00, 0xf0]).copy(bios, bios.length - 16); // jmp far F000:0000
  return bios;
}

/** Run the probe firmware under one accelerator. */
export async function probeAccel(
  binary: string,
  accel: QemuAccel,
  biosFile: string,
  timeoutMs: number,
  log: Logger,
): Promise<AccelProbe> {
  const started = Date.now();
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-machine',
    'pc',
    '-accel',
    accel,
    // The CPU model launches use (see args.ts), so the probe tests the same thing.
    ...(accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-m',
    '16',
    '-bios',
    biosFile,
    '-device',
    `isa-debug-exit,iobase=0x${DEBUG_EXIT_PORT.toString(16)},iosize=1`,
  ];
  return new Promise<AccelProbe>((resolve) => {
    let stderr = '';
    let timedOut = false;
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const finish = (available: boolean, reason?: string) => {
      clearTimeout(timer);
      const result: AccelProbe = { accel, available, ms: Date.now() - started };
      if (reason) result.reason = reason;
      log.debug({ probe: result }, 'accelerator probe');
      resolve(result);
    };
    child.once('error', (err) => finish(false, `cannot run ${binary}: ${err.message}`));
    child.once('exit', (code, signal) => {
      if (code === PROBE_EXIT_STATUS) return finish(true);
      if (timedOut) return finish(false, `no vCPU progress within ${timeoutMs} ms`);
      const msg = stderr.trim().split('\n').slice(-2).join(' ') || `exit ${code ?? signal}`;
      finish(false, msg);
    });
  });
}

async function qemuVersion(binary: string): Promise<string | null> {
  return new Promise((resolve) => {
    let out = '';
    const child = spawn(binary, ['-version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    child.once('error', () => resolve(null));
    child.once('exit', (code) => resolve(code === 0 ? (out.split('\n')[0] ?? '').trim() : null));
  });
}

export interface ProbeOptions {
  binary: string;
  kvmTimeoutMs: number;
  tcgTimeoutMs: number;
  /** Skip KVM entirely (config `accel: tcg`). */
  allowKvm: boolean;
}

/** Probe both accelerators in parallel (the KVM one may have to time out). */
export async function probeQemu(opts: ProbeOptions, log: Logger): Promise<QemuProbe> {
  const version = await qemuVersion(opts.binary);
  if (version === null) {
    const reason = `${opts.binary} not found or not runnable`;
    return {
      binary: opts.binary,
      version,
      kvm: { accel: 'kvm', available: false, reason, ms: 0 },
      tcg: { accel: 'tcg', available: false, reason, ms: 0 },
      accel: null,
    };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-probe-'));
  try {
    const bios = path.join(dir, 'probe.bin');
    await writeFile(bios, probeBios());
    const [kvm, tcg] = await Promise.all([
      opts.allowKvm
        ? probeAccel(opts.binary, 'kvm', bios, opts.kvmTimeoutMs, log)
        : Promise.resolve<AccelProbe>({
            accel: 'kvm',
            available: false,
            reason: 'disabled by configuration',
            ms: 0,
          }),
      probeAccel(opts.binary, 'tcg', bios, opts.tcgTimeoutMs, log),
    ]);
    const accel = kvm.available ? 'kvm' : tcg.available ? 'tcg' : null;
    return { binary: opts.binary, version, kvm, tcg, accel };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The backend's probe: the full one (both accelerators) run once and cached,
 * and the ProbeResult system.info and the registry see.
 */
export function createProber(
  o: {
    binary: string;
    kvmTimeoutMs: number;
    tcgTimeoutMs: number;
    accel: 'auto' | QemuAccel;
    machine: string;
    confinement: () => HypervisorConfinement;
  },
  log: Logger,
) {
  let probing: Promise<QemuProbe> | null = null;
  const probeDetails = () =>
    (probing ??= probeQemu(
      {
        binary: o.binary,
        kvmTimeoutMs: o.kvmTimeoutMs,
        tcgTimeoutMs: o.tcgTimeoutMs,
        allowKvm: o.accel !== 'tcg',
      },
      log,
    ).then((p) => {
      log.info(
        { accel: p.accel, kvm: p.kvm, tcg: p.tcg, version: p.version },
        p.accel ? `QEMU usable with ${p.accel}` : 'QEMU unusable',
      );
      return p;
    }));

  async function probe(): Promise<ProbeResult> {
    const p = await probeDetails();
    let accel: QemuAccel | null = p.accel;
    if (o.accel === 'kvm' && !p.kvm.available) accel = null;
    const result: ProbeResult = {
      available: accel !== null,
      accel,
      version: p.version,
      details: { binary: p.binary, kvm: p.kvm, tcg: p.tcg, machine: o.machine },
      confinement: o.confinement(),
    };
    if (!accel) result.reason = o.accel === 'kvm' ? `kvm: ${p.kvm.reason}` : `tcg: ${p.tcg.reason}`;
    return result;
  }
  return { probeDetails, probe };
}
