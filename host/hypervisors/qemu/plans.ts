/**
 * The QEMU backend's dry runs (HypervisorPlans): the argv a launch would run
 * and the QMP commands an operation would send, built by the same functions
 * the real launch (args.ts) and hot-plug (hotplug.ts) use.
 */
import type { PlanCommand } from '../../../protocol/plan.js';
import type { ControlOp, DiskSpec, HypervisorPlans, LaunchSpec } from '../types.js';
import { buildQemuArgs, qemuPaths, type QemuAccel, type QemuMachine } from './args.js';
import { qmpDiskSnapshotPlan } from './disk-snapshot.js';
import { blockdevObjects, deviceProps, diskIds } from './hotplug.js';
import type { QmpCommands } from './qmp.js';

/** The QMP command of each control operation (vm.ts sends these). */
export const QMP_CONTROL = {
  pause: 'stop',
  resume: 'cont',
  reboot: 'system_reset',
  powerdown: 'system_powerdown',
  quit: 'quit',
} as const satisfies Record<ControlOp, keyof QmpCommands>;

export function qemuPlans(p: {
  binary: string;
  machine: QemuMachine;
  tcgTbSizeMiB: number;
  sandbox: boolean;
  blkDriver: string;
  /** The accelerator a launch would use now (a read-only probe, cached). */
  accel(): Promise<QemuAccel>;
}): HypervisorPlans {
  const qmp = (execute: string, args?: Record<string, unknown>): PlanCommand => ({
    kind: 'qmp',
    execute,
    ...(args !== undefined ? { arguments: args } : {}),
  });
  const serialOf = (disk: DiskSpec): string => disk.serial ?? '<serial>';
  return {
    async launch(spec: LaunchSpec) {
      const paths = qemuPaths(spec.dir);
      const args = buildQemuArgs({
        spec,
        accel: await p.accel(),
        machine: p.machine,
        paths,
        tcgTbSizeMiB: p.tcgTbSizeMiB,
        sandbox: p.sandbox,
      });
      return {
        argv: [p.binary, ...args],
        files: [
          paths.qmp,
          paths.agent,
          `${paths.console}.in`,
          `${paths.console}.out`,
          paths.log,
          paths.consoleLog,
        ],
      };
    },
    control: (op) => [qmp(QMP_CONTROL[op])],
    attachDisk: (disk) => [
      ...blockdevObjects({ ...disk, serial: serialOf(disk) }).map((o) => qmp('blockdev-add', o)),
      qmp('device_add', deviceProps(serialOf(disk), p.blkDriver)),
    ],
    diskSnapshot: qmpDiskSnapshotPlan,
    detachDisk: (serial) => {
      const ids = diskIds(serial);
      return [
        qmp('device_del', { id: ids.device }),
        qmp('blockdev-del', { 'node-name': ids.node }),
        qmp('blockdev-del', { 'node-name': ids.file }),
      ];
    },
  };
}
