/**
 * The Firecracker configuration calls for a launch spec, in the order they
 * are made before InstanceStart: PUT /machine-config, /boot-source,
 * /drives/{id}, /network-interfaces/{id}, /vsock. Pure: the spec in, the
 * requests out. Shapes are those of the official API (specs/firecracker.yaml,
 * checked by the fake VMM in the tests). Paths inside the VM's folder are
 * relative (vmm-common.ts).
 */
import { MvirtError } from '../../../protocol/errors.js';
import { buildKernelCmdline } from '../kernel-cmdline.js';
import type { LaunchSpec } from '../types.js';
import { driveName, GUEST_CID, VMM_FILES } from '../vmm-common.js';

export const FC_BACKEND = 'firecracker';

export interface FcRequest {
  method: 'PUT' | 'PATCH';
  path: string;
  body: Record<string, unknown>;
}

const unsupported = (what: string, capability: string, extra: Record<string, unknown> = {}) =>
  new MvirtError('CAPABILITY_UNSUPPORTED', `backend firecracker ${what}`, {
    details: { backend: FC_BACKEND, capability, ...extra },
  });

/** Refused before anything runs: what Firecracker cannot give this spec. */
export function checkSpec(spec: LaunchSpec): void {
  if (spec.channel === 'virtio-serial')
    throw unsupported('has no virtio-serial agent channel (it has vsock, tcp)', 'channels', {
      channel: spec.channel,
    });
  if (spec.network.mode === 'user')
    throw unsupported('has no user-mode network; use network bridge or none', 'network', {
      network: 'user',
    });
  for (const d of spec.disks)
    if ((d.format ?? 'raw') !== 'raw')
      throw unsupported(`opens raw disks only (${d.name ?? d.path} is ${d.format})`, 'disks');
}

export function configRequests(spec: LaunchSpec): FcRequest[] {
  checkSpec(spec);
  const reqs: FcRequest[] = [
    {
      method: 'PUT',
      path: '/machine-config',
      body: { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMiB },
    },
    {
      method: 'PUT',
      path: '/boot-source',
      body: {
        kernel_image_path: spec.kernel,
        initrd_path: spec.initrd,
        // reboot=k: a guest reboot is Firecracker's exit (it has no reset); panic=1 likewise.
        boot_args: `${buildKernelCmdline(spec)} reboot=k panic=1`,
      },
    },
  ];
  spec.disks.forEach((d, i) =>
    reqs.push({
      method: 'PUT',
      path: `/drives/${driveName(i)}`,
      body: {
        drive_id: driveName(i),
        path_on_host: driveName(i),
        is_root_device: false,
        is_read_only: d.readOnly,
      },
    }),
  );
  if (spec.network.mode === 'bridge') {
    const { tap, mac } = spec.network;
    if (!tap || !/^[A-Za-z0-9_.-]{1,15}$/.test(tap))
      throw new MvirtError('INVALID_PARAMS', 'bridge networking needs a TAP interface name');
    if (mac && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(mac))
      throw new MvirtError('INVALID_PARAMS', `bad MAC address ${mac}`);
    reqs.push({
      method: 'PUT',
      path: '/network-interfaces/net0',
      body: { iface_id: 'net0', host_dev_name: tap, ...(mac ? { guest_mac: mac } : {}) },
    });
  }
  reqs.push({
    method: 'PUT',
    path: '/vsock',
    body: { guest_cid: GUEST_CID, uds_path: VMM_FILES.vsock },
  });
  return reqs;
}

/** GET /'s state → the backend-neutral run state. */
export function toRunState(state: unknown): 'starting' | 'running' | 'paused' | 'unknown' {
  switch (state) {
    case 'Not started':
      return 'starting';
    case 'Running':
      return 'running';
    case 'Paused':
      return 'paused';
    default:
      return 'unknown';
  }
}
