/**
 * The guest's block devices as the kernel lists them in /sys/block: name,
 * the serial the host gave the disk (a volume's id), size, read-only, and
 * where it is mounted (from /proc/mounts; usage is in telemetry's `disk`
 * entries for that mount). Loop and RAM devices are not disks anyone attached.
 */
import type { Telemetry } from '../protocol/agent.js';
import type { Platform } from './platform/types.js';

type BlockDevice = NonNullable<Telemetry['blockDevices']>[number];

/** The devices with their mounted file systems' size and use (the `blockDevices` request). */
export async function blockDevicesNow(platform: Platform): Promise<BlockDevice[]> {
  const devices = await listBlockDevices(platform, (await platform.readText('/proc/mounts')) ?? '');
  for (const d of devices) {
    const s = d.mount !== undefined ? await platform.statfs(d.mount) : null;
    if (s) Object.assign(d, s);
  }
  return devices;
}

const NOT_DISKS = /^(loop|ram|zram)\d/;
const MAX_DEVICES = 32;
/** virtio-blk serials are at most 20 bytes. */
const SERIAL = /^[\x21-\x7e]{1,20}$/;

/** Mount point of /dev/<name> or of one of its partitions (vdb1, nvme0n1p1). */
function mountOf(mounts: string, name: string): string | undefined {
  for (const line of mounts.split('\n')) {
    const [dev, mnt] = line.split(' ');
    if (!dev || !mnt || !dev.startsWith(`/dev/${name}`)) continue;
    const rest = dev.slice(`/dev/${name}`.length);
    if (rest === '' || /^p?\d+$/.test(rest)) return mnt.replace(/\\040/g, ' ').slice(0, 256);
  }
  return undefined;
}

export async function listBlockDevices(platform: Platform, mounts: string): Promise<BlockDevice[]> {
  const out: BlockDevice[] = [];
  const names = (await platform.listDir('/sys/block')).filter((n) => !NOT_DISKS.test(n)).sort();
  for (const name of names.slice(0, MAX_DEVICES)) {
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(name)) continue;
    const [size, ro, serial] = await Promise.all(
      ['size', 'ro', 'serial'].map((f) => platform.readText(`/sys/block/${name}/${f}`)),
    );
    const sectors = Number(size?.trim());
    if (!Number.isSafeInteger(sectors)) continue;
    const s = serial?.trim();
    const mount = mountOf(mounts, name);
    out.push({
      name,
      // /sys/block/<dev>/size counts 512-byte sectors whatever the device's own.
      sizeBytes: sectors * 512,
      readOnly: ro?.trim() === '1',
      ...(s && SERIAL.test(s) ? { serial: s } : {}),
      ...(mount ? { mount } : {}),
    });
  }
  return out;
}
