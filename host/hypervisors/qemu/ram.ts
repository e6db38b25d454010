/**
 * Guest RAM as files (state.ts says why): one `<vm id>.ram` per running VM in
 * the RAM folder, on tmpfs (no writeback to disk; its pages are the guest's
 * memory). Made at launch, empty for a boot or a sparse copy of a saved
 * state's ram.bin for a restore; removed when the process is gone.
 */
import { readdirSync } from 'node:fs';
import { chmod, mkdir, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { readCmdline } from '../proc.js';
import { copySparse } from '../../sparse-copy.js';
import { RAM_FILE } from './state.js';

export interface RamFiles {
  /** The folder, or null: VMs keep RAM anonymous (saved inside the stream). */
  readonly dir: string | null;
  fileOf(vmId: string): string | null;
  /** The VM's RAM file for a launch: empty (`size` MiB), or a copy of `<restoreDir>/ram.bin`. */
  prepare(vmId: string, memoryMiB: number, restoreDir?: string): Promise<string | null>;
  remove(vmId: string): Promise<void>;
  /** Recovery: remove the files no running QEMU maps (their VMs are gone). */
  sweep(): Promise<string[]>;
}

export function createRamFiles(dir: string | null): RamFiles {
  const fileOf = (vmId: string) => (dir ? path.join(dir, `${vmId}.ram`) : null);
  return {
    dir,
    fileOf,
    async prepare(vmId, memoryMiB, restoreDir) {
      const file = fileOf(vmId);
      if (!dir || !file) return null;
      // 0711: each VM's user reaches its own file by name, lists nothing.
      await mkdir(dir, { recursive: true, mode: 0o711 });
      await chmod(dir, 0o711);
      await rm(file, { force: true });
      if (restoreDir) {
        await copySparse(path.join(restoreDir, RAM_FILE), file);
      } else {
        const fh = await open(file, 'wx', 0o600);
        try {
          await fh.truncate(memoryMiB * 1024 * 1024);
        } finally {
          await fh.close();
        }
      }
      return file;
    },
    async remove(vmId) {
      const file = fileOf(vmId);
      if (file) await rm(file, { force: true });
    },
    async sweep() {
      if (!dir) return [];
      let names: string[];
      try {
        names = readdirSync(dir).filter((n) => n.endsWith('.ram'));
      } catch {
        return [];
      }
      const mapped = new Set<string>();
      for (const p of readdirSync('/proc')) {
        if (!/^\d+$/.test(p)) continue;
        for (const a of readCmdline(Number(p)) ?? []) {
          const m = /mem-path=([^,]+)/.exec(a);
          if (m) mapped.add(m[1]!);
        }
      }
      const gone = names.map((n) => path.join(dir, n)).filter((f) => !mapped.has(f));
      await Promise.all(gone.map((f) => rm(f, { force: true })));
      return gone;
    },
  };
}
