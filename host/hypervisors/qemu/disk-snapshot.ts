/**
 * Live disk snapshots on a running QEMU (RunningVm.diskSnapshot): qcow2
 * internal snapshots through QMP `blockdev-snapshot-internal-sync` and
 * `blockdev-snapshot-delete-internal-sync`. Internal rather than an external
 * overlay (`blockdev-snapshot-sync`): the snapshot stays inside the volume's
 * one file, `qemu-img snapshot` lists, restores and deletes it once the VM is
 * stopped exactly like one taken offline, and no chain of overlay files has to
 * be tracked, linked into the VM folder and merged back. QEMU drains the
 * disk's in-flight requests and takes the snapshot in one step; the guest
 * keeps running (disk-only: no memory state, the point a power cut would leave).
 *
 * The disk is found by its file name through `query-block`, not by the
 * `-drive id=d<i>` of args.ts: that works for disks attached at boot and for
 * hot-plugged ones (blockdev-add, their own node names) alike. Commands go
 * through executeRaw so this stays beside, not inside, the shared QmpCommands.
 */
import type { PlanCommand } from '../../../protocol/plan.js';
import path from 'node:path';
import { MvirtError } from '../../../protocol/errors.js';
import type { QmpClient } from './qmp.js';

/** The parts of query-block's BlockInfo used here. */
interface BlockInfo {
  device: string;
  qdev?: string;
  inserted?: { file: string; 'node-name'?: string; image?: { filename?: string } };
}

/** The node QMP addresses for the disk whose file is named `file`. */
export async function findDiskNode(qmp: QmpClient, file: string): Promise<string> {
  const blocks = await qmp.executeRaw<BlockInfo[]>('query-block');
  for (const b of blocks) {
    const ins = b.inserted;
    if (!ins) continue;
    const names = [ins.file, ins.image?.filename].filter((f): f is string => !!f);
    if (!names.some((f) => path.basename(f) === file)) continue;
    // The node name works for -drive disks and blockdev-add ones; the
    // BlockBackend name (device) only for the former.
    const node = ins['node-name'] ?? b.device;
    if (node) return node;
  }
  throw new MvirtError('HYPERVISOR_ERROR', `the VM has no disk ${file} open`, {
    details: { file },
  });
}

/** The QMP command of each action. */
const QMP_DISK_SNAPSHOT = {
  create: 'blockdev-snapshot-internal-sync',
  delete: 'blockdev-snapshot-delete-internal-sync',
} as const;

/**
 * What qmpDiskSnapshot sends, for a dry run: the node name is read from
 * query-block only then, so it is shown as a placeholder.
 */
export function qmpDiskSnapshotPlan(
  action: 'create' | 'delete',
  file: string,
  name: string,
): PlanCommand[] {
  return [
    { kind: 'qmp', execute: 'query-block' },
    {
      kind: 'qmp',
      execute: QMP_DISK_SNAPSHOT[action],
      arguments: { device: `<node of ${file}, from query-block>`, name },
    },
  ];
}

export async function qmpDiskSnapshot(
  qmp: QmpClient,
  action: 'create' | 'delete',
  file: string,
  name: string,
): Promise<void> {
  const device = await findDiskNode(qmp, file);
  await qmp.executeRaw(QMP_DISK_SNAPSHOT[action], { device, name });
}
