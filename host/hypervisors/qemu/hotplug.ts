/**
 * Volume disks in QEMU, at boot and hot-plugged: the same block nodes and
 * device either way, so that a disk a VM booted with is detached exactly like
 * one plugged in later. Every name is derived from the disk's serial (the
 * volume id): the file node `f-<serial>`, the format node `d-<serial>`, the
 * virtio-blk device `disk-<serial>`. After a daemon restart the re-attached
 * QEMU's disks are found by these names; nothing is persisted for them.
 *
 * Attach is blockdev-add (file node, then format node, both read-only when
 * asked; a qcow2 overlay opens its template itself through its relative
 * backing reference, which vm/disks.ts linked into the folder) and
 * device_add. Detach is device_del, then the DEVICE_DELETED event for that
 * device id (the guest must release it: ACPI PCI hot-unplug), then
 * blockdev-del of both nodes.
 */
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import type { DiskHotplug, DiskSpec } from '../types.js';
import type { QmpClient, QmpEvent } from './qmp.js';

/** What QEMU accepts as a virtio-blk serial, and what mvirt uses: a volume id. */
const SERIAL_RE = /^[A-Za-z0-9-]{1,20}$/;

export interface DiskIds {
  /** The file node (protocol layer). */
  file: string;
  /** The format node (raw or qcow2) the device uses. */
  node: string;
  /** The virtio-blk device. */
  device: string;
}

export function diskIds(serial: string): DiskIds {
  // Also what keeps a serial from smuggling options into a QEMU option list.
  if (!SERIAL_RE.test(serial)) throw new MvirtError('INVALID_PARAMS', `bad disk serial ${serial}`);
  return { file: `f-${serial}`, node: `d-${serial}`, device: `disk-${serial}` };
}

/** The two blockdev-add objects of a disk with a serial (also `-blockdev` JSON at boot). */
export function blockdevObjects(disk: DiskSpec & { serial: string }): Record<string, unknown>[] {
  const ids = diskIds(disk.serial);
  const ro = disk.readOnly;
  return [
    { driver: 'file', 'node-name': ids.file, filename: disk.path, 'read-only': ro },
    // The format is always named: probing would let a raw disk whose guest
    // wrote a qcow2 header make QEMU open the backing file that header names.
    { driver: disk.format ?? 'raw', 'node-name': ids.node, file: ids.file, 'read-only': ro },
  ];
}

/** device_add's arguments (also the `-device` option at boot). */
export function deviceProps(serial: string, driver: string): Record<string, string> {
  const ids = diskIds(serial);
  return { driver, id: ids.device, drive: ids.node, serial };
}

/** QMP's error class of a failed command (QmpError kept in MvirtError.details). */
const qmpClass = (err: unknown): string | undefined =>
  err instanceof MvirtError ? (err.details as { class?: string } | undefined)?.class : undefined;

export interface QemuHotplugParts {
  qmp: QmpClient;
  /** The VM's folder (disk files are linked there). */
  dir: string;
  /** virtio-blk-pci (pc, q35). */
  blkDriver: string;
  /** The confiner's hand-over for this folder (confine.ts). */
  handOver(dir: string, disk: DiskSpec): Promise<void>;
  log: Logger;
}

export function createQemuHotplug(p: QemuHotplugParts): DiskHotplug {
  const { qmp, log } = p;
  const serialOf = (disk: DiskSpec): string => {
    if (disk.serial === undefined)
      throw new MvirtError('INVALID_PARAMS', 'a hot-plugged disk needs a serial');
    return disk.serial;
  };

  /** blockdev-del, where "no such node" means done already. */
  async function del(node: string): Promise<void> {
    try {
      await qmp.executeRaw('blockdev-del', { 'node-name': node });
    } catch (err) {
      if (err instanceof MvirtError && /find node/i.test(err.message)) return;
      throw err;
    }
  }

  return {
    handOver: (disk) => p.handOver(p.dir, disk),

    async addBackend(disk) {
      const [file, format] = blockdevObjects({ ...disk, serial: serialOf(disk) });
      await qmp.executeRaw('blockdev-add', file);
      try {
        await qmp.executeRaw('blockdev-add', format);
      } catch (err) {
        // One step for the caller: leave no half (the file node) behind.
        await del(diskIds(serialOf(disk)).file).catch((e: unknown) =>
          log.warn({ err: e }, 'cannot remove the file node of a failed blockdev-add'),
        );
        throw err;
      }
    },

    async removeBackend(serial) {
      const ids = diskIds(serial);
      await del(ids.node);
      await del(ids.file);
    },

    async plug(disk) {
      await qmp.executeRaw('device_add', deviceProps(serialOf(disk), p.blkDriver));
    },

    async unplug(serial, timeoutMs) {
      const { device } = diskIds(serial);
      // Listen before asking: the event may come before device_del's reply.
      let onEvent!: (ev: QmpEvent) => void;
      let timer: NodeJS.Timeout | undefined;
      const deleted = new Promise<void>((resolve) => {
        onEvent = (ev) => {
          if (ev.event === 'DEVICE_DELETED' && ev.data.device === device) resolve();
        };
        qmp.on('event', onEvent);
      });
      try {
        try {
          await qmp.executeRaw('device_del', { id: device });
        } catch (err) {
          // Gone already (an earlier detach timed out and the guest let go later).
          if (qmpClass(err) === 'DeviceNotFound') return;
          // Asked before and still pending: keep waiting for the same event.
          if (!(err instanceof MvirtError && /process of unplug/i.test(err.message))) throw err;
        }
        const timedOut = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), timeoutMs);
        });
        const closed = qmp.closed.then(() => 'closed' as const);
        const end = await Promise.race([deleted, timedOut, closed]);
        if (end === 'closed')
          throw new MvirtError('VM_BAD_STATE', `the VM exited while disk ${serial} was unplugged`);
        if (end === 'timeout')
          throw new MvirtError(
            'DISK_BUSY',
            `the guest did not release disk ${serial} within ${timeoutMs} ms; it stays attached (try again, or stop the VM and detach it then)`,
            { details: { serial, timeoutMs } },
          );
      } finally {
        if (timer) clearTimeout(timer);
        qmp.off('event', onEvent);
      }
    },
  };
}
