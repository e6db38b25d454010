/**
 * Test guests for the QEMU backend: a Debian kernel plus a tiny busybox
 * initramfs whose init writes markers to the serial console and the
 * `mvirt.agent` virtio-serial port, then echoes whatever the host writes to
 * that port. It does not need the µOS image, so the backend can be tested on
 * its own (and before the image exists).
 *
 * The kernel comes from, in order: MVIRT_TEST_KERNEL (+ MVIRT_TEST_MODULES),
 * the cache in test-output/qemu-kernel, the host's /boot, or Debian's
 * linux-image package fetched with `apt-get download` into that cache.
 */
import { execFile as execFileCb } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFile = promisify(execFileCb);

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = path.join(REPO_ROOT, 'test-output', 'qemu-kernel');

export const CONSOLE_MARKER = 'MVIRT-TEST-CONSOLE-UP';
export const AGENT_MARKER = 'MVIRT-TEST-AGENT-UP';

export interface TestKernel {
  kernel: string;
  /** /lib/modules/<version> of that kernel. */
  modulesDir: string;
  version: string;
}

/** Modules the test init loads (in dependency order), relative to kernel/. */
const MODULES = [
  'drivers/virtio/virtio_ring.ko', // virtio.ko uses its virtio_break_device
  'drivers/virtio/virtio.ko',
  'drivers/virtio/virtio_pci_modern_dev.ko',
  'drivers/virtio/virtio_pci_legacy_dev.ko',
  'drivers/virtio/virtio_pci.ko',
  'drivers/virtio/virtio_mmio.ko',
  'drivers/char/virtio_console.ko',
  'drivers/char/hw_random/virtio-rng.ko',
  'drivers/block/virtio_blk.ko',
  'drivers/input/evdev.ko',
  'drivers/acpi/button.ko',
];

function kernelIn(root: string): TestKernel | null {
  const boot = path.join(root, 'boot');
  if (!existsSync(boot)) return null;
  const vmlinuz = readdirSync(boot)
    .filter((f) => f.startsWith('vmlinuz-'))
    .sort()
    .pop();
  if (!vmlinuz) return null;
  const version = vmlinuz.slice('vmlinuz-'.length);
  const modulesDir = path.join(root, 'lib', 'modules', version);
  if (!existsSync(modulesDir)) return null;
  return { kernel: path.join(boot, vmlinuz), modulesDir, version };
}

/** Find (or fetch once) a kernel for test boots; null when none can be had. */
export async function findTestKernel(): Promise<TestKernel | null> {
  const envKernel = process.env.MVIRT_TEST_KERNEL;
  if (envKernel) {
    const modulesDir = process.env.MVIRT_TEST_MODULES ?? '';
    return { kernel: envKernel, modulesDir, version: path.basename(envKernel) };
  }
  const cached = kernelIn(path.join(CACHE, 'root'));
  if (cached) return cached;
  const host = kernelIn('/');
  if (host) return host;
  try {
    // linux-image-amd64 is a metapackage; its first dependency is the real image.
    const { stdout } = await execFile('apt-cache', ['depends', 'linux-image-amd64']);
    const pkg = /Depends:\s*(linux-image-[\w.-]+)/.exec(stdout)?.[1];
    if (!pkg) return null;
    await mkdir(CACHE, { recursive: true });
    await execFile('apt-get', ['download', pkg], { cwd: CACHE });
    const deb = readdirSync(CACHE).find((f) => f.startsWith(pkg) && f.endsWith('.deb'));
    if (!deb) return null;
    await execFile('dpkg-deb', ['-x', path.join(CACHE, deb), path.join(CACHE, 'root')]);
    await rm(path.join(CACHE, deb), { force: true });
    return kernelIn(path.join(CACHE, 'root'));
  } catch {
    return null;
  }
}

// ------------------------------------------------------------ cpio (newc)

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
}

/** Write a cpio "newc" archive (what the kernel unpacks as an initramfs). */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const push = (name: string, mode: number, data: Buffer) => {
    const hex = (n: number) => n.toString(16).padStart(8, '0');
    const nameBuf = Buffer.from(`${name}\0`);
    const header =
      '070701' +
      [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex).join('');
    parts.push(Buffer.from(header), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) push(e.name, e.mode, e.data ?? Buffer.alloc(0));
  push('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

const DIR = 0o040755;
const FILE = 0o100644;
const EXEC = 0o100755;
const SYMLINK = 0o120777;

/**
 * The test init. Markers carry the guest uptime so tests can report boot
 * times; `boot=N` counts boots within one QEMU process via a pmem-less trick:
 * none is needed, tests count console markers instead.
 */
export const TEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "/lib/modules/$m" || echo "insmod $m failed"; done
echo "${CONSOLE_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
# ACPI power button -> poweroff, so system_powerdown has a guest that obeys
# (any input event from the "Power Button" device; busybox acpid is not needed).
# The button's input device may register after this point on a loaded host,
# so look for it for up to 30 s (a test guest; the µOS has the agent instead).
( for _ in $(seq 1 300); do
    for e in /sys/class/input/event*; do
      if [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ]; then
        head -c 1 < "/dev/input/\${e##*/}" > /dev/null && poweroff -f
        exit 0
      fi
    done
    sleep 0.1
  done ) &
# Echo commands typed on the console: lets tests drive the guest (poweroff…).
( while read -r line; do
    case "$line" in
      poweroff) poweroff -f ;;
      reboot) reboot -f ;;
      sh:*) sh -c "\${line#sh:}" ;;
      *) echo "echo:$line" ;;
    esac
  done < /dev/ttyS0 > /dev/ttyS0 2>&1 ) &
port=
while [ -z "$port" ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = mvirt.agent ] && port=/dev/\${p##*/}
  done
  [ -z "$port" ] && sleep 0.1
done
echo "${AGENT_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime)" > "$port"
# Hold the agent port open for the host, line by line echoing what arrives
# (one read-write descriptor: a port opens only once at a time). The inner
# loop ends at EOF when the host disconnects; the outer one reopens.
while :; do
  while IFS= read -r line; do echo "$line"; done 0<>"$port" 1>&0
  sleep 0.2
done
`;

/** Build the test initramfs (busybox + modules + init) into outFile. */
export async function buildTestInitramfs(kernel: TestKernel, outFile: string): Promise<void> {
  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'dev', 'proc', 'sys', 'etc', 'lib', 'lib/modules']) {
    entries.push({ name: d, mode: DIR });
  }
  entries.push({ name: 'bin/busybox', mode: EXEC, data: await readFile('/bin/busybox') });
  const { stdout } = await execFile('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    entries.push({ name: `bin/${applet}`, mode: SYMLINK, data: Buffer.from('busybox') });
  }
  const loaded: string[] = [];
  for (const m of MODULES) {
    const file = path.join(kernel.modulesDir, 'kernel', m);
    if (!existsSync(file)) continue; // built in, or absent: init skips it
    const base = path.basename(m);
    entries.push({ name: `lib/modules/${base}`, mode: FILE, data: readFileSync(file) });
    loaded.push(base);
  }
  entries.push({ name: 'modules.list', mode: FILE, data: Buffer.from(loaded.join('\n') + '\n') });
  entries.push({ name: 'init', mode: EXEC, data: Buffer.from(TEST_INIT) });
  await mkdir(path.dirname(outFile), { recursive: true });
  await writeFile(outFile, newcArchive(entries));
}

export interface TestGuest {
  kernel: string;
  initrd: string;
  /** A temp folder for per-VM dirs; removed by cleanup(). */
  workDir: string;
  cleanup(): Promise<void>;
}

/** Kernel + test initramfs + a temp work folder, or null when no kernel can be found. */
export async function prepareTestGuest(): Promise<TestGuest | null> {
  const kernel = await findTestKernel();
  if (!kernel) return null;
  // Short paths: unix socket paths are limited to 107 bytes.
  const workDir = await mkdtemp('/tmp/mvirt-qemu-test-');
  const initrd = path.join(workDir, 'initrd.cpio');
  await buildTestInitramfs(kernel, initrd);
  return {
    kernel: kernel.kernel,
    initrd,
    workDir,
    cleanup: () => rm(workDir, { recursive: true, force: true }),
  };
}
