/**
 * Small stand-ins for kernel files, laid out as the real ones are: an x86-64
 * ELF with (or without) the PVH note cloud-hypervisor and Firecracker jump
 * through, and a bzImage whose setup header points at a compressed copy of
 * it with the uncompressed size appended, as the kernel build writes it.
 */
import { gzipSync } from 'node:zlib';

const EHDR = 64;
const PHDR = 56;

/** An x86-64 ELF executable with one PT_NOTE segment: the PVH entry note, or a GNU one. */
export function fakeElfKernel(o: { pvh?: boolean; padding?: number } = {}): Buffer {
  const name = o.pvh === false ? 'GNU\0' : 'Xen\0';
  const type = o.pvh === false ? 3 : 18; // NT_GNU_BUILD_ID : XEN_ELFNOTE_PHYS32_ENTRY
  const note = Buffer.alloc(12 + 4 + 8);
  note.writeUInt32LE(4, 0);
  note.writeUInt32LE(8, 4);
  note.writeUInt32LE(type, 8);
  note.write(name, 12, 'latin1');
  note.writeUInt32LE(0x1000000, 16); // the entry address
  const h = Buffer.alloc(EHDR + PHDR);
  h.writeUInt32BE(0x7f454c46, 0);
  h[4] = 2; // ELFCLASS64
  h[5] = 1; // little-endian
  h[6] = 1; // EV_CURRENT
  h.writeUInt16LE(2, 16); // ET_EXEC
  h.writeUInt16LE(62, 18); // EM_X86_64
  h.writeUInt32LE(1, 20);
  h.writeBigUInt64LE(0x1000000n, 24); // e_entry
  h.writeBigUInt64LE(BigInt(EHDR), 32); // e_phoff
  h.writeUInt16LE(EHDR, 52);
  h.writeUInt16LE(PHDR, 54);
  h.writeUInt16LE(1, 56);
  const p = EHDR;
  h.writeUInt32LE(4, p); // PT_NOTE
  h.writeBigUInt64LE(BigInt(EHDR + PHDR), p + 8); // p_offset
  h.writeBigUInt64LE(BigInt(note.length), p + 32); // p_filesz
  h.writeBigUInt64LE(BigInt(note.length), p + 40);
  return Buffer.concat([h, note, Buffer.alloc(o.padding ?? 0)]);
}

/** A bzImage (boot protocol 2.15) around `compressed`, which decompresses to `size` bytes. */
export function fakeBzImage(
  compressed: Buffer,
  size: number,
  o: { version?: number } = {},
): Buffer {
  const setupSects = 4;
  const pm = (setupSects + 1) * 512;
  const b = Buffer.alloc(pm + compressed.length + 4);
  b[0x1f1] = setupSects;
  b.write('HdrS', 0x202, 'latin1');
  b.writeUInt16LE(o.version ?? 0x20f, 0x206);
  b.writeUInt32LE(0, 0x248); // payload_offset, from the protected-mode code
  b.writeUInt32LE(compressed.length + 4, 0x24c);
  compressed.copy(b, pm);
  b.writeUInt32LE(size, pm + compressed.length);
  return b;
}

/** A gzip bzImage of `elf`. */
export const gzipBzImage = (elf: Buffer): Buffer => fakeBzImage(gzipSync(elf), elf.length);
