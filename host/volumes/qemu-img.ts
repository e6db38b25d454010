/**
 * qemu-img (Debian: qemu-utils), always through execFile with an argv array,
 * never a shell. Every path given here was derived from ids by files.ts and
 * checked not to be a symbolic link just before the call.
 */
import { execFile as execFileCb } from 'node:child_process';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';
import { MvirtError } from '../../protocol/errors.js';
import type { VolumeFormat } from '../../protocol/rpc.js';

const execFile = promisify(execFileCb);

export interface ImageInfo {
  format: string;
  virtualSize: number;
  /** Bytes the file takes on the host (allocated blocks). */
  actualSize: number;
  backingFilename: string | null;
  /** qcow2 internal snapshots (none for raw). */
  snapshots: ImageSnapshot[];
}

export interface ImageSnapshot {
  id: string;
  name: string;
  vmStateBytes: number;
  /** Seconds since the epoch. */
  dateSec: number;
}

/** qemu-img snapshot's actions: -c create, -a apply (restore), -d delete. */
export type SnapshotAction = 'create' | 'apply' | 'delete';
const SNAPSHOT_FLAG: Record<SnapshotAction, string> = { create: '-c', apply: '-a', delete: '-d' };

/**
 * The argv (binary first) of each qemu-img command that writes: the one
 * place each is spelled, used by the calls below and by dry runs (plan.ts),
 * so a plan shows exactly what would run.
 */
export interface QemuImgArgv {
  create(file: string, format: VolumeFormat, sizeBytes: number): string[];
  convert(from: string, to: string, format: VolumeFormat, fromFormat?: string): string[];
  resize(file: string, format: VolumeFormat, sizeBytes: number): string[];
  snapshot(file: string, action: SnapshotAction, name: string): string[];
}

export interface QemuImg {
  readonly argv: QemuImgArgv;
  create(file: string, format: VolumeFormat, sizeBytes: number): Promise<void>;
  /** A full, independent copy (also how imports are brought in and converted). */
  convert(from: string, to: string, format: VolumeFormat, fromFormat?: string): Promise<void>;
  resize(file: string, format: VolumeFormat, sizeBytes: number): Promise<void>;
  info(file: string, format?: string): Promise<ImageInfo>;
  /** An internal snapshot of a qcow2 file nothing else has open (qemu-img takes its write lock). */
  snapshot(file: string, action: SnapshotAction, name: string): Promise<void>;
}

export function createQemuImg(binary = 'qemu-img'): QemuImg {
  async function run([bin = binary, ...args]: string[], what: string): Promise<string> {
    try {
      const { stdout } = await execFile(bin, args, { maxBuffer: 4 * 1024 * 1024 });
      return stdout;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      throw new MvirtError(
        'INTERNAL',
        e.code === 'ENOENT'
          ? `${binary} is not installed (Debian: apt-get install qemu-utils)`
          : `${what} failed: ${(e.stderr ?? e.message).trim()}`,
        { cause: err },
      );
    }
  }
  const q = (...args: string[]): string[] => [binary, ...args];
  const argv: QemuImgArgv = {
    create: (file, format, sizeBytes) => q('create', '-q', '-f', format, file, String(sizeBytes)),
    // -u would skip opening the backing file; opening it checks it is there.
    convert: (from, to, format, fromFormat) =>
      q('convert', '-q', ...(fromFormat ? ['-f', fromFormat] : []), '-O', format, from, to),
    resize: (file, format, sizeBytes) => q('resize', '-q', '-f', format, file, String(sizeBytes)),
    // qemu-img snapshot has no -f: --image-opts names the driver instead of
    // letting qemu-img probe the file (commas doubled, QEMU's escape). The
    // name follows its flag as that option's argument: even one starting
    // with '-' is never read as an option (and names are checked anyway).
    snapshot: (file, action, name) =>
      q(
        'snapshot',
        '-q',
        '--image-opts',
        SNAPSHOT_FLAG[action],
        name,
        `driver=qcow2,file.driver=file,file.filename=${file.replace(/,/g, ',,')}`,
      ),
  };
  return {
    argv,
    async create(file, format, sizeBytes) {
      await run(argv.create(file, format, sizeBytes), 'qemu-img create');
    },
    async convert(from, to, format, fromFormat) {
      await run(argv.convert(from, to, format, fromFormat), 'qemu-img convert');
      // qemu-img convert writes with cache=unsafe and never flushes (seen with
      // strace): without this the volume's row could be committed while its
      // data is still in the page cache, and a power cut leave it torn.
      const fh = await open(to, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
    async resize(file, format, sizeBytes) {
      await run(argv.resize(file, format, sizeBytes), 'qemu-img resize');
    },
    async info(file, format) {
      // --force-share: a running VM holds a write lock on its disks; reading
      // the header beside it is harmless.
      const out = await run(
        q('info', '--force-share', '--output=json', ...(format ? ['-f', format] : []), file),
        'qemu-img info',
      );
      const j = JSON.parse(out) as {
        format: string;
        'virtual-size': number;
        'actual-size'?: number;
        'backing-filename'?: string;
        snapshots?: { id: string; name: string; 'vm-state-size': number; 'date-sec': number }[];
      };
      return {
        format: j.format,
        virtualSize: j['virtual-size'],
        actualSize: j['actual-size'] ?? 0,
        backingFilename: j['backing-filename'] ?? null,
        snapshots: (j.snapshots ?? []).map((x) => ({
          id: x.id,
          name: x.name,
          vmStateBytes: x['vm-state-size'],
          dateSec: x['date-sec'],
        })),
      };
    },
    async snapshot(file, action, name) {
      await run(argv.snapshot(file, action, name), `qemu-img snapshot ${SNAPSHOT_FLAG[action]}`);
    },
  };
}
