/**
 * Checks that a merged kernel `.config` has what mvirt needs.
 *
 *   node --import tsx kernel-config/check.ts path/to/.config [fragment.config...]
 *
 * Two checks: the REQUIRED table below (what the µOS and the agent rely on,
 * each with the reason, so a failure says what breaks), and, when fragments
 * are given, that every setting in them survived `olddefconfig` (Kconfig drops
 * an option silently when one of its dependencies is missing).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Option → why mvirt needs it. All must be `=y` (no modules in the µOS). */
export const REQUIRED: Readonly<Record<string, string>> = {
  CONFIG_64BIT: 'the agent is an x86_64 executable',
  CONFIG_BINFMT_ELF: 'runs busybox and the agent',
  CONFIG_BINFMT_SCRIPT: 'runs the init scripts',
  CONFIG_BLK_DEV_INITRD: 'boots the initramfs',
  CONFIG_RD_LZ4: 'the builder writes LZ4-compressed initrds',
  CONFIG_DEVTMPFS: '/dev without udev',
  CONFIG_PROC_FS: 'the agent reads /proc',
  CONFIG_SYSFS: 'the agent finds its port in /sys/class/virtio-ports',
  CONFIG_TMPFS: '/tmp and /run',
  CONFIG_FUTEX: 'glibc threads (node)',
  CONFIG_EPOLL: 'libuv event loop',
  CONFIG_EVENTFD: 'libuv',
  CONFIG_SIGNALFD: 'libuv',
  CONFIG_TIMERFD: 'libuv',
  CONFIG_SHMEM: 'memfd/shared memory',
  CONFIG_UNIX98_PTYS: '/dev/pts',
  CONFIG_SERIAL_8250: 'serial console ttyS0',
  CONFIG_SERIAL_8250_CONSOLE: 'kernel log and panics on ttyS0',
  CONFIG_VIRTIO: 'all devices are virtio',
  CONFIG_VIRTIO_PCI: 'virtio on pc/q35 and cloud-hypervisor',
  CONFIG_VIRTIO_MMIO: 'virtio on microvm and Firecracker',
  CONFIG_VIRTIO_BLK: 'the read-only root disk',
  CONFIG_VIRTIO_CONSOLE: 'the agent channel (virtio-serial port mvirt.agent)',
  CONFIG_VIRTIO_NET: 'networking and the TCP agent channel',
  CONFIG_HW_RANDOM_VIRTIO: 'entropy from the host',
  CONFIG_VSOCKETS: 'the vsock agent channel',
  CONFIG_VIRTIO_VSOCKETS: 'the vsock agent channel',
  CONFIG_NET: 'sockets',
  CONFIG_UNIX: 'unix sockets',
  CONFIG_INET: 'TCP/IP',
  CONFIG_SQUASHFS: 'the read-only root disk format',
  CONFIG_SQUASHFS_ZSTD: 'the root disk compressor',
  CONFIG_CGROUPS: 'job limits and OOM detection',
  CONFIG_MEMCG: 'OOM detection (memory.events)',
  CONFIG_CFS_BANDWIDTH: 'per-job CPU limits (cpu.max for job.run {limits: {cpus}})',
  CONFIG_ACPI: 'clean poweroff',
  // What Firecracker and cloud-hypervisor need beyond QEMU's devices (their
  // virtio-mmio/PCI, vsock and ttyS0 are above).
  CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES:
    'Firecracker describes its virtio-mmio devices on the command line',
  CONFIG_PVH: 'cloud-hypervisor and Firecracker boot the ELF vmlinux through its PVH entry',
  CONFIG_SERIO_I8042: "Firecracker's SendCtrlAltDel (graceful stop) arrives on an i8042 keyboard",
  CONFIG_KEYBOARD_ATKBD:
    "Firecracker's SendCtrlAltDel (graceful stop) is an AT keyboard's Ctrl-Alt-Del",
  CONFIG_VT: 'the keyboard handler that turns Ctrl-Alt-Del into a signal to init',
};

export interface CheckResult {
  ok: boolean;
  problems: string[];
}

/** Parses `.config` text into option → value ('n' for "is not set"). */
export function parseConfig(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (set?.[1] !== undefined && set[2] !== undefined) m.set(set[1], set[2]);
    const unset = /^# (CONFIG_\w+) is not set$/.exec(line);
    if (unset?.[1] !== undefined) m.set(unset[1], 'n');
  }
  return m;
}

export function checkConfig(configText: string, fragments: string[] = []): CheckResult {
  const cfg = parseConfig(configText);
  const problems: string[] = [];
  for (const [opt, why] of Object.entries(REQUIRED)) {
    const v = cfg.get(opt);
    if (v !== 'y') problems.push(`${opt} is ${v ?? 'absent'}, must be y: ${why}`);
  }
  for (const frag of fragments) {
    for (const [opt, want] of parseConfig(frag)) {
      const got = cfg.get(opt) ?? 'n';
      if (got !== want)
        problems.push(`${opt}=${want} requested by a fragment, got ${got} (missing dependency?)`);
    }
  }
  return { ok: problems.length === 0, problems };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [config, ...frags] = process.argv.slice(2);
  if (config === undefined) {
    process.stderr.write('usage: check.ts .config [fragment.config...]\n');
    process.exit(2);
  }
  const r = checkConfig(
    readFileSync(config, 'utf8'),
    frags.map((f) => readFileSync(f, 'utf8')),
  );
  for (const p of r.problems) process.stderr.write(`check: ${p}\n`);
  process.stderr.write(
    r.ok ? 'check: .config has what mvirt needs\n' : `check: ${r.problems.length} problem(s)\n`,
  );
  process.exit(r.ok ? 0 : 1);
}
