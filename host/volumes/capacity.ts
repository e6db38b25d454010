/**
 * Storage capacity: a new volume (or a resize's growth) must fit both the
 * free space of the volumes folder's file system and `--storage-max-gib`.
 * Sizes count in full (virtual size, not what a sparse file takes today): a
 * guest may fill its disk, and a host whose disk fills up fails every VM on
 * it at once, mid-write.
 */
import { MvirtError } from '../../protocol/errors.js';
import type { SystemInfo } from '../../protocol/rpc.js';
import type { VolumeRepo } from '../store/index.js';
import type { VolumeFiles } from './files.js';

export interface CapacityOptions {
  /** --storage-max-gib in bytes; null: no cap beyond the free space. */
  maxBytes: number | null;
}

const GIB = 1024 * 1024 * 1024;
const MIB = 1024 * 1024;
const gib = (n: number): string => `${(n / GIB).toFixed(2)} GiB`;
const mib = (n: number): string =>
  `${Number.isInteger(n / MIB) ? n / MIB : (n / MIB).toFixed(2)} MiB`;

export function createCapacity(
  files: VolumeFiles,
  repo: Pick<VolumeRepo, 'totals'>,
  opts: CapacityOptions,
) {
  /** Each check, once passed, says so in words: a dry run's admission (plan.ts). */
  async function requireDisk(bytes: number): Promise<string> {
    const free = files.freeBytes();
    if (bytes > free)
      throw new MvirtError(
        'STORAGE_FULL',
        `${gib(bytes)} do not fit: ${gib(free)} (${free} bytes) free in the volumes folder`,
        { details: { limit: 'disk', requestedBytes: bytes, freeBytes: free } },
      );
    return `capacity: ${mib(bytes)} needed, ${gib(free)} free in the volumes folder`;
  }
  return {
    /**
     * STORAGE_FULL unless `bytes` more fit the file system's free space alone:
     * for growth inside an existing volume's file (a snapshot's copied
     * clusters), which --storage-max-gib's count of virtual sizes does not see.
     */
    requireDisk,
    /** STORAGE_FULL, naming what is free, unless `bytes` more fit. */
    async require(bytes: number): Promise<string> {
      const disk = await requireDisk(bytes);
      if (opts.maxBytes === null) return `${disk} (no --storage-max-gib)`;
      const { provisioned } = repo.totals();
      const left = Math.max(0, opts.maxBytes - provisioned);
      if (bytes > left)
        throw new MvirtError(
          'STORAGE_FULL',
          `${gib(bytes)} do not fit: ${gib(left)} (${left} bytes) of --storage-max-gib ${gib(opts.maxBytes)} are free`,
          {
            details: {
              limit: 'storageMax',
              requestedBytes: bytes,
              freeBytes: left,
              maxBytes: opts.maxBytes,
              provisionedBytes: provisioned,
            },
          },
        );
      return `${disk}, ${gib(left)} of --storage-max-gib ${gib(opts.maxBytes)} left`;
    },
    /** system.info's storage figures. */
    info(): NonNullable<SystemInfo['storage']> {
      const t = repo.totals();
      return {
        provisionedBytes: t.provisioned,
        usedBytes: t.used,
        freeBytes: files.freeBytes(),
        maxBytes: opts.maxBytes,
      };
    },
  };
}

export type Capacity = ReturnType<typeof createCapacity>;
