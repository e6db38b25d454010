/**
 * The cloud-hypervisor VmConfig (PUT /api/v1/vm.create) for a launch spec.
 * Pure: the spec in, the JSON body out. Field names and shapes are those of
 * the official API (specs/cloud-hypervisor.yaml, checked by the fake VMM in
 * the tests). Paths inside the VM's folder are relative (vmm-common.ts).
 */
import { MvirtError } from '../../../protocol/errors.js';
import { buildKernelCmdline } from '../kernel-cmdline.js';
import type { DiskSpec, LaunchSpec } from '../types.js';
import { driveName, GUEST_CID, VMM_FILES } from '../vmm-common.js';

export const MiB = 1024 * 1024;

/** A hot-plugged disk's device id: derived from its serial (types.ts DiskHotplug). */
export const diskId = (serial: string): string => `vol-${serial}`;

export function diskConfig(disk: DiskSpec, file: string, id: string): Record<string, unknown> {
  return {
    path: file,
    readonly: disk.readOnly,
    id,
    image_type: disk.format === 'qcow2' ? 'Qcow2' : 'Raw',
    // qcow2 overlays name their templates: cloud-hypervisor opens them only when told.
    ...(disk.format === 'qcow2' && disk.backing?.length ? { backing_files: true } : {}),
    ...(disk.serial ? { serial: disk.serial } : {}),
  };
}

function netConfig(spec: LaunchSpec): Record<string, unknown>[] {
  const n = spec.network;
  if (n.mac && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(n.mac))
    throw new MvirtError('INVALID_PARAMS', `bad MAC address ${n.mac}`);
  switch (n.mode) {
    case 'none':
      return [];
    case 'bridge':
      // The network module made the TAP (owned by mvirt, on the bridge), as for QEMU.
      if (!n.tap || !/^[A-Za-z0-9_.-]{1,15}$/.test(n.tap))
        throw new MvirtError('INVALID_PARAMS', 'bridge networking needs a TAP interface name');
      return [{ tap: n.tap, id: 'net0', ...(n.mac ? { mac: n.mac } : {}) }];
    default:
      throw new MvirtError(
        'CAPABILITY_UNSUPPORTED',
        'backend cloud-hypervisor has no user-mode network (no slirp or passt stream); use network bridge or none',
        { details: { backend: 'cloud-hypervisor', capability: 'network', network: n.mode } },
      );
  }
}

export function buildVmConfig(spec: LaunchSpec): Record<string, unknown> {
  if (spec.channel === 'virtio-serial')
    throw new MvirtError(
      'CAPABILITY_UNSUPPORTED',
      'backend cloud-hypervisor has no virtio-serial agent channel (it has vsock, tcp)',
      { details: { backend: 'cloud-hypervisor', capability: 'channels', channel: spec.channel } },
    );
  return {
    cpus: { boot_vcpus: spec.vcpus, max_vcpus: spec.vcpus },
    memory: { size: spec.memoryMiB * MiB },
    payload: {
      kernel: spec.kernel,
      initramfs: spec.initrd,
      cmdline: buildKernelCmdline(spec),
    },
    disks: spec.disks.map((d, i) =>
      diskConfig(d, driveName(i), d.serial ? diskId(d.serial) : `disk${i}`),
    ),
    net: netConfig(spec),
    // The 16550 the µOS logs to (console=ttyS0) on a unix socket the host connects to.
    serial: { mode: 'Socket', socket: VMM_FILES.consoleSocket },
    console: { mode: 'Off' },
    // The agent's channel on every VM: the guest dials CID 2 port 1024, the
    // VMM connects to <socket>_1024 where mvirtd listens.
    vsock: { cid: GUEST_CID, socket: VMM_FILES.vsock },
  };
}

/** vm.info's state → the backend-neutral run state. */
export function toRunState(
  state: unknown,
): 'starting' | 'running' | 'paused' | 'shutdown' | 'unknown' {
  switch (state) {
    case 'Created':
      return 'starting';
    case 'Running':
      return 'running';
    case 'Paused':
    case 'BreakPoint':
      return 'paused';
    case 'Shutdown':
      return 'shutdown';
    default:
      return 'unknown';
  }
}
