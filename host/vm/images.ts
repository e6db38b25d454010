/**
 * Image lookup: `<images-dir>/<name>/manifest.json` as written by the image
 * builder, read with the builder's own schema (images/manifest.ts). Names are validated by the protocol (no '/', no '..') before they
 * reach this module; the resolved paths are checked to stay inside the image
 * folder anyway.
 */
import { access, readdir } from 'node:fs/promises';
import path from 'node:path';
import { bootFiles, MANIFEST_FILE, readManifest, type Manifest } from '../../images/manifest.js';
import { elfKernel } from '../../images/vmlinux.js';
import { MvirtError } from '../../protocol/errors.js';
import type { KernelFormat } from '../hypervisors/types.js';
import { nameProblem } from '../../protocol/topics.js';

export interface ResolvedImage {
  name: string;
  dir: string;
  kernel: string;
  initrd: string;
  disk?: string;
  /** An imported container image's own disk (images/oci/), attached right after `disk`. */
  imageDisk?: string;
  cmdline: string;
  /** Every µOS image runs mvirt-agent; false is for foreign images (VM goes to `running`). */
  agent: boolean;
  manifest: Manifest;
}

export interface ImageStore {
  resolve(name: string): Promise<ResolvedImage>;
  /**
   * The image with a kernel file in one of `formats` (a backend's
   * kernelFormats, best first): its bzImage, or the ELF vmlinux derived from
   * it once and kept in the kernel cache (images/vmlinux.ts).
   */
  forBackend(img: ResolvedImage, formats: readonly KernelFormat[]): Promise<ResolvedImage>;
  list(): Promise<string[]>;
  /** The cached listing while fresh (no I/O), else undefined. */
  listCached(): string[] | undefined;
}

/** How long a listing is reused; system.info and the host status ask often. */
const LIST_TTL_MS = 2000;

/** kernelCacheDir: where derived ELF kernels go (mvirtd: `<data-dir>/cache/kernels`). */
export function createImageStore(
  imagesDir: string,
  kernelCacheDir = path.join(imagesDir, '..', 'cache', 'kernels'),
): ImageStore {
  let cached: { at: number; names: Promise<string[]>; value?: string[] } | undefined;
  return {
    async forBackend(img, formats) {
      if (formats.includes('bzImage')) return img;
      if (!formats.includes('elf'))
        throw new MvirtError('KERNEL_UNSUITABLE', `no kernel format this backend boots`);
      return { ...img, kernel: await elfKernel(img.kernel, kernelCacheDir) };
    },
    async resolve(name) {
      if (nameProblem(name)) throw new MvirtError('IMAGE_NOT_FOUND', `no image named ${name}`);
      const dir = path.resolve(imagesDir, name);
      let manifest: Manifest;
      try {
        manifest = await readManifest(dir);
      } catch (err) {
        throw new MvirtError(
          'IMAGE_NOT_FOUND',
          `no image named ${name} in ${imagesDir}; build it with \`mvirt image build\``,
          { cause: err },
        );
      }
      const files = bootFiles(dir, manifest);
      for (const f of Object.values(files)) {
        // A manifest is data: its file names must not lead out of the image folder.
        if (!f.startsWith(dir + path.sep)) {
          throw new MvirtError('IMAGE_NOT_FOUND', `image ${name}: ${f} is outside its folder`);
        }
      }
      return { name, dir, ...files, cmdline: manifest.cmdline, agent: true, manifest };
    },
    list() {
      const now = performance.now();
      if (!cached || now - cached.at > LIST_TTL_MS) {
        const entry: NonNullable<typeof cached> = { at: now, names: listNow() };
        void entry.names.then((v) => (entry.value = v));
        cached = entry;
      }
      return cached.names;
    },
    listCached() {
      const fresh = cached && performance.now() - cached.at <= LIST_TTL_MS;
      if (!fresh) void this.list(); // refresh for the next caller
      return fresh ? cached?.value : undefined;
    },
  };

  async function listNow(): Promise<string[]> {
    {
      let names: string[];
      try {
        names = await readdir(imagesDir);
      } catch {
        return [];
      }
      const out: string[] = [];
      for (const n of names.sort()) {
        if (nameProblem(n)) continue;
        try {
          await access(path.join(imagesDir, n, MANIFEST_FILE));
          out.push(n);
        } catch {
          // not a built image
        }
      }
      return out;
    }
  }
}
