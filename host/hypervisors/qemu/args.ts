/**
 * QEMU command line for one VM. Pure functions: the spec in, an argv out
 * (spawned without a shell, so nothing here is ever shell-quoted; values
 * inside QEMU's `key=value,…` option lists have their commas doubled).
 */
import path from 'node:path';
import { FW_CFG_IDENTITY, VIRTIO_PORT_NAME, type Channel } from '../../../protocol/agent.js';
import { buildKernelCmdline } from '../kernel-cmdline.js';

export { buildKernelCmdline };
import { MvirtError } from '../../../protocol/errors.js';
import type { LaunchSpec } from '../types.js';
import { blockdevObjects, deviceProps } from './hotplug.js';
import { RAM_BACKEND_ID } from './state.js';

/**
 * `pc` is the default: under TCG on a loaded 2-core host the Debian kernel on
 * `microvm` hung in TSC calibration (no PIT/HPET/PM-timer reference); `pc`
 * offers all three, so calibration always finishes. `q35` works too (PCIe,
 * slightly more to probe). `microvm` is kept for custom kernels that boot
 * with a known `tsc_khz`/`lpj`; it needs virtio-mmio in the guest kernel.
 */
export type QemuMachine = 'pc' | 'q35' | 'microvm';
export type QemuAccel = 'kvm' | 'tcg';

export interface QemuPaths {
  qmp: string;
  /** The console FIFOs' base: QEMU reads `<console>.in` and writes `<console>.out` (console.ts). */
  console: string;
  /** The console socket of VMs launched by an earlier mvirtd (re-attach only). */
  consoleSocket: string;
  agent: string;
  /** QEMU's own stdout/stderr. */
  log: string;
  consoleLog: string;
}

export function qemuPaths(dir: string): QemuPaths {
  return {
    qmp: path.join(dir, 'qmp.sock'),
    console: path.join(dir, 'console'),
    consoleSocket: path.join(dir, 'console.sock'),
    agent: path.join(dir, 'agent.sock'),
    log: path.join(dir, 'qemu.log'),
    consoleLog: path.join(dir, 'console.log'),
  };
}

/** sun_path is 108 bytes including the NUL. */
export const MAX_UNIX_PATH = 107;

/** Double commas: QEMU's option parser treats `,,` as a literal comma. */
export const optValue = (v: string): string => v.replace(/,/g, ',,');

export interface QemuArgsInput {
  spec: LaunchSpec;
  accel: QemuAccel;
  machine: QemuMachine;
  paths: QemuPaths;
  /** TCG translation cache in MiB: bounds host memory per VM (QEMU's default is 1 GiB). */
  tcgTbSizeMiB: number;
  /** seccomp sandbox; off only for debugging. */
  sandbox: boolean;
  /** The exact machine type a restored state needs (`pc-i440fx-7.2`), instead of `machine`'s alias. */
  machineType?: string;
  /** Guest RAM as this file (tmpfs; state.ts says why), or anonymous memory without it. */
  ramFile?: string;
  /** vhost-vsock: the guest's CID and the inherited fd of /dev/vhost-vsock (vsock.ts). */
  vsock?: { cid: number; fd: number };
}

/** The netdev of the VM's one NIC (set_link takes it for the NIC too). */
export const NETDEV = 'net0';

/** The identity file in the VM's folder, handed to the guest as fw_cfg FW_CFG_IDENTITY. */
export const IDENTITY_FILE = 'identity';

/**
 * The agent channels every QEMU launch builds, best first. vsock comes
 * before them where the host can give it (vhost-vsock, qemu/vsock.ts): the
 * backend's capability map is built from the same answer, so it never
 * claims a channel the launch refuses.
 */
export const QEMU_CHANNELS = ['virtio-serial', 'tcp'] as const satisfies readonly Channel[];

export function buildQemuArgs(input: QemuArgsInput): string[] {
  const { spec, accel, machine, paths } = input;
  for (const p of [paths.qmp, paths.agent]) {
    if (Buffer.byteLength(p) > MAX_UNIX_PATH) {
      throw new MvirtError('BOOT_FAILED', `socket path too long for a unix socket: ${p}`);
    }
  }
  const channels: readonly Channel[] = input.vsock ? ['vsock', ...QEMU_CHANNELS] : QEMU_CHANNELS;
  if (!channels.includes(spec.channel)) {
    throw new MvirtError(
      'CAPABILITY_UNSUPPORTED',
      `backend qemu has no ${spec.channel} agent channel here (it has ${channels.join(', ')})`,
      { details: { backend: 'qemu', capability: 'channels', channel: spec.channel } },
    );
  }
  // microvm has no PCI bus: its virtio devices are virtio-mmio (`-device`).
  const virtio = (kind: string) =>
    machine === 'microvm' ? `virtio-${kind}-device` : `virtio-${kind}-pci`;
  const machineOpt =
    machine === 'microvm'
      ? // Keep the legacy timers the kernel calibrates against (see QemuMachine).
        'microvm,pit=on,pic=on,rtc=on,isa-serial=on'
      : // SMM and vmport only cost time under TCG; nothing in the µOS uses them.
        `${input.machineType ?? machine},smm=off,vmport=off`;
  const ramOpt = input.ramFile ? `,memory-backend=${RAM_BACKEND_ID}` : '';
  const accelOpt = accel === 'kvm' ? 'kvm' : `tcg,tb-size=${input.tcgTbSizeMiB}`;

  const args: string[] = [
    '-name',
    `guest=${optValue(`mvirt-${spec.vmId}`)},debug-threads=on`,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-accel',
    accelOpt,
    '-machine',
    machineOpt + ramOpt,
    ...(input.ramFile
      ? [
          '-object',
          `memory-backend-file,id=${RAM_BACKEND_ID},size=${spec.memoryMiB}M,mem-path=${optValue(input.ramFile)},share=on`,
        ]
      : []),
    // KVM: the host CPU as is. TCG: QEMU's default model (cheapest to emulate).
    ...(accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-m',
    `${spec.memoryMiB}`,
    '-smp',
    `${spec.vcpus}`,
    // Start paused: the backend connects QMP and the console before the first
    // guest instruction, so no console output is lost; it then sends `cont`.
    '-S',
    '-msg',
    'timestamp=on',
    '-kernel',
    spec.kernel,
    '-initrd',
    spec.initrd,
    '-append',
    buildKernelCmdline(spec),
    // Control: QMP on a unix socket, one client (the daemon) at a time.
    '-chardev',
    `socket,id=qmp,path=${optValue(paths.qmp)},server=on,wait=off`,
    '-mon',
    'chardev=qmp,mode=control',
    // Serial console (ttyS0) on two FIFOs the backend made (console.ts says why not a socket).
    '-chardev',
    `pipe,id=console,path=${optValue(paths.console)}`,
    '-serial',
    'chardev:console',
    // The agent channel: virtio-serial port `mvirt.agent`.
    '-device',
    `${virtio('serial')},id=vser0`,
    '-chardev',
    `socket,id=agent,path=${optValue(paths.agent)},server=on,wait=off`,
    '-device',
    `virtserialport,bus=vser0.0,chardev=agent,name=${VIRTIO_PORT_NAME}`,
    // Entropy: without it the guest can block in getrandom() early in boot.
    '-object',
    'rng-random,id=rng0,filename=/dev/urandom',
    '-device',
    `${virtio('rng')},rng=rng0`,
  ];
  if (input.vsock && spec.channel === 'vsock') {
    const { cid, fd } = input.vsock;
    if (!Number.isInteger(cid) || cid < 3 || !Number.isInteger(fd) || fd < 3)
      throw new MvirtError('INVALID_PARAMS', `bad vsock CID ${cid} or fd ${fd}`);
    // The agent dials the host (CID 2) from this CID; the device fd is mvirtd's (vsock.ts).
    args.push(
      '-device',
      `vhost-vsock-${machine === 'microvm' ? 'device' : 'pci'},guest-cid=${cid},vhostfd=${fd}`,
    );
  }
  if (spec.identity) {
    // Read-only to the guest and re-read after a restore (protocol/agent.ts Identity).
    args.push(
      '-fw_cfg',
      `name=${FW_CFG_IDENTITY},file=${optValue(path.join(spec.dir, IDENTITY_FILE))}`,
    );
    // A new generation id at every restore: the guest kernel reseeds its RNG at once.
    if (machine !== 'microvm') args.push('-device', 'vmgenid,guid=auto');
  }
  // Restore: wait, paused, for the saved state (state.ts loadState) instead of booting.
  if (spec.restore) args.push('-incoming', 'defer');

  spec.disks.forEach((disk, i) => {
    if (disk.serial !== undefined) {
      // Volumes: block nodes and a device named after the serial, exactly as
      // hot-plug makes them (hotplug.ts), so either kind is detached alike.
      for (const o of blockdevObjects({ ...disk, serial: disk.serial }))
        args.push('-blockdev', JSON.stringify(o));
      const { driver, ...props } = deviceProps(disk.serial, virtio('blk'));
      args.push(
        '-device',
        [driver, ...Object.entries(props).map(([k, v]) => `${k}=${optValue(v)}`)].join(','),
      );
      return;
    }
    const ro = disk.readOnly ? ',readonly=on' : '';
    // The format is always named: probing would let a raw disk whose guest
    // wrote a qcow2 header make QEMU open the backing file that header names.
    const format = disk.format ?? 'raw';
    args.push(
      '-drive',
      `file=${optValue(disk.path)},if=none,format=${format},id=d${i}${ro}`,
      '-device',
      `${virtio('blk')},drive=d${i}`,
    );
  });

  args.push(...networkArgs(spec, virtio('net')));

  if (input.sandbox) {
    // seccomp: no exec, no privilege changes, no obsolete syscalls.
    args.push(
      '-sandbox',
      'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    );
  }
  return args;
}

function networkArgs(spec: LaunchSpec, nicDevice: string): string[] {
  const mac = spec.network.mac ? `,mac=${spec.network.mac}` : '';
  if (spec.network.mac && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(spec.network.mac)) {
    throw new MvirtError('INVALID_PARAMS', `bad MAC address ${spec.network.mac}`);
  }
  switch (spec.network.mode) {
    case 'none':
      return ['-nic', 'none'];
    case 'user': {
      // Never plain slirp: it maps the guest's gateway to the host's 127.0.0.1.
      // With a socket, passt (started by mvirtd) carries the traffic
      // (network/passt.ts); without one, slirp restricted to nothing at all.
      const sock = spec.network.socket;
      if (sock !== undefined && /[,\s]/.test(sock))
        throw new MvirtError('INVALID_PARAMS', `bad network socket path ${sock}`);
      const netdev =
        sock !== undefined
          ? `stream,id=net0,server=off,addr.type=unix,addr.path=${sock}`
          : 'user,id=net0,restrict=on';
      return ['-netdev', netdev, '-device', `${nicDevice},netdev=net0${mac}`];
    }
    case 'bridge': {
      // Hook for the network module: it creates the TAP (owned by mvirt,
      // attached to the bridge) and passes its name; QEMU only opens it.
      const tap = spec.network.tap;
      if (!tap || !/^[A-Za-z0-9_.-]{1,15}$/.test(tap)) {
        throw new MvirtError('INVALID_PARAMS', 'bridge networking needs a TAP interface name');
      }
      return [
        '-netdev',
        `tap,id=net0,ifname=${tap},script=no,downscript=no`,
        '-device',
        `${nicDevice},netdev=net0${mac}`,
      ];
    }
  }
}
