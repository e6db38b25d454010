/** What the volume tests run in a guest to reach a disk by its serial. */
import type { RpcClient } from '../../harness/client.js';
import type { JobRunResult } from '../../protocol/rpc.js';
import { ok } from './qemu.js';

/**
 * busybox sh: sets D to the guest's block device whose serial is $ID. A
 * hot-plugged disk appears in /sys/block a moment after device_add returns,
 * and sysfs has nothing a job could wait on: it looks again every 0.1 s, for
 * at most 10 s.
 */
export const FIND_DISK =
  'i=0; D=; while [ -z "$D" ] && [ $i -lt 100 ]; do for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$ID" ] && D=/dev/${b##*/}; done; [ -n "$D" ] || { sleep 0.1 2>/dev/null || sleep 1; }; i=$((i+1)); done; [ -n "$D" ] || { echo "no disk with serial $ID" >&2; ls /sys/block >&2; exit 9; }';

/** Run `script` in the VM as a job with $ID set to the volume id; its result once it ends. */
export const diskJob = async (
  c: RpcClient,
  vm: string,
  script: string,
  id: string,
  timeoutMs = 60_000,
): Promise<JobRunResult> =>
  ok(
    await c.call(
      'job.run',
      { vm, argv: ['sh', '-c', script], env: { ID: id }, wait: true },
      { timeoutMs },
    ),
  );
