/**
 * What an image boots from: the LZ4 initramfs (busybox, stage-1 init, the
 * modules needed to reach the disk) and the squashfs root disk (busybox init,
 * the agent, Debian packages), each with fixed modes, owners and order.
 */
import {
  appendFile,
  chmod,
  copyFile,
  cp,
  lstat,
  mkdir,
  readdir,
  rename,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { cpioNewc, S_IFCHR, treeEntries } from './cpio.js';
import { type DebInput } from './debian.js';
import { walkSorted } from './hash.js';
import { INITRAMFS_DIR } from './paths.js';
import { type ResolvedRecipe } from './recipe.js';
import { makeSquashfs, run } from './run.js';
import { buildHelper, HELPERS } from './helpers.js';
import { assertNoSymlinkDirs, configurePackages, ldconfig } from './deb-configure.js';
import { createProgress, type Progress } from './progress.js';

import type { KernelParts } from './kernel.js';

/**
 * The line a recipe's `console: shell` adds to the µOS's inittab: busybox
 * init runs (and respawns) the emergency shell on the serial console.
 */
export const CONSOLE_SHELL_INITTAB =
  '# The emergency shell on the serial console (recipe "console": "shell").\n' +
  '::respawn:/usr/libexec/mvirt/console-shell\n';

// ------------------------------------------------------------------ initramfs

async function busyboxApplets(busyboxBin: string): Promise<string[]> {
  // The static busybox from the package runs on the build host too.
  const r = await run(busyboxBin, ['--list-full']);
  return r.stdout
    .toString()
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('/'))
    .sort();
}

async function extractDeb(file: string, dest: string): Promise<void> {
  await run('dpkg-deb', ['-x', file, dest]);
}

export async function buildInitramfs(a: {
  work: string;
  outFile: string;
  busybox: DebInput;
  kernel: KernelParts;
  mods: string[];
  sde: number;
}): Promise<void> {
  const stage = path.join(a.work, 'initramfs');
  const bbx = path.join(a.work, 'busybox');
  await extractDeb(a.busybox.file, bbx);
  for (const d of [
    'bin',
    'dev',
    'etc/mvirt',
    'lib/modules',
    'newroot',
    'proc',
    'run',
    'sys',
    'tmp',
  ])
    await mkdir(path.join(stage, d), { recursive: true });
  await copyFile(path.join(bbx, 'bin/busybox'), path.join(stage, 'bin/busybox'));
  // Flat /bin: stage 1 needs no /sbin or /usr distinctions.
  for (const applet of await busyboxApplets(path.join(bbx, 'bin/busybox'))) {
    const name = path.basename(applet);
    if (name !== 'busybox' && !existsSync(path.join(stage, 'bin', name)))
      await symlink('busybox', path.join(stage, 'bin', name));
  }
  await copyFile(path.join(INITRAMFS_DIR, 'init'), path.join(stage, 'init'));
  if (a.kernel.modulesDir !== null) {
    for (const m of a.mods) {
      const dest = path.join(stage, 'lib/modules', a.kernel.release, m);
      await mkdir(path.dirname(dest), { recursive: true });
      await copyFile(path.join(a.kernel.modulesDir, m), dest);
    }
  }
  await writeFile(path.join(stage, 'etc/mvirt/modules'), a.mods.map((m) => `${m}\n`).join(''));
  await normaliseModes(stage);
  // /dev/console must exist before devtmpfs is mounted: the kernel opens it for /init's stdio.
  const entries = await treeEntries(stage, [
    { name: 'dev/console', mode: S_IFCHR | 0o600, rdev: { major: 5, minor: 1 } },
  ]);
  const cpio = cpioNewc(entries, a.sde);
  // Legacy LZ4 framing (-l) is what the kernel's initramfs decompressor reads.
  const lz = await run('lz4', ['-l', '-9', '-q', '-c'], { input: cpio });
  await writeFile(a.outFile, lz.stdout);
}

/**
 * Modes from git checkouts depend on umask: make them canonical (dirs 0755,
 * executables 0755, other files 0644) unless a recipe set one explicitly.
 */
async function normaliseModes(
  dir: string,
  keep: ReadonlyMap<string, number> = new Map(),
): Promise<void> {
  for (const rel of await walkSorted(dir)) {
    const p = path.join(dir, rel);
    const st = await lstat(p);
    if (st.isSymbolicLink()) continue;
    const explicit = keep.get(rel);
    if (explicit !== undefined) await chmod(p, explicit);
    else if (st.isDirectory()) await chmod(p, (st.mode & 0o7000) | 0o755);
    else await chmod(p, (st.mode & 0o7000) | (st.mode & 0o111 ? 0o755 : 0o644));
  }
}

// ------------------------------------------------------------------ root disk

const PRUNE = [
  'usr/share/doc',
  'usr/share/man',
  'usr/share/info',
  'usr/share/lintian',
  'usr/share/locale',
  'usr/share/bug',
];

export async function buildRootfs(a: {
  work: string;
  outFile: string;
  recipe: ResolvedRecipe;
  debs: DebInput[];
  sde: number;
  progress?: Progress;
}): Promise<void> {
  const stage = path.join(a.work, 'rootfs');
  await mkdir(stage);
  for (const d of a.debs) await extractDeb(d.file, stage);
  await mergeUsr(stage);
  const progress = a.progress ?? createProgress(1, () => {});
  // The builder writes below these: none may be a package's symlink out of the root.
  for (const d of ['usr/bin', 'usr/sbin', 'usr/lib', 'usr/libexec', 'etc/init.d', 'root', 'tmp'])
    await assertNoSymlinkDirs(stage, d);
  for (const p of PRUNE) await rm(path.join(stage, p), { recursive: true, force: true });
  await excludePaths(stage, a.recipe.exclude, progress);
  await configurePackages(stage, a.debs, a.work, progress);
  for (const d of [
    'dev',
    'proc',
    'sys',
    'run',
    'tmp',
    'mnt',
    'root',
    'home',
    'var',
    'etc',
    'usr/bin',
    'usr/sbin',
    'usr/lib',
    'usr/libexec',
  ])
    await mkdir(path.join(stage, d), { recursive: true });
  for (const applet of await busyboxApplets(path.join(stage, 'usr/bin/busybox'))) {
    const dest = path.join(stage, 'usr', applet.replace(/^(usr\/)?/, ''));
    if (path.basename(dest) === 'busybox') continue;
    if (!existsSync(dest)) {
      await mkdir(path.dirname(dest), { recursive: true });
      await symlink('/usr/bin/busybox', dest);
    }
  }
  // The µOS userland (inittab, rcS, agent wrapper) overrides package files.
  await cp(path.join(INITRAMFS_DIR, 'rootfs'), stage, {
    recursive: true,
    force: true,
    verbatimSymlinks: true,
  });
  if (a.recipe.console === 'shell')
    await appendFile(path.join(stage, 'etc/inittab'), CONSOLE_SHELL_INITTAB);
  await copyFile(a.recipe.agentPath, path.join(stage, 'usr/bin/mvirt-agent'));
  await chmod(path.join(stage, 'usr/bin/mvirt-agent'), 0o755);
  for (const h of HELPERS) await buildHelper(h, path.join(stage, h.dest));
  const explicit = new Map<string, number>([
    ['usr/bin/mvirt-agent', 0o755],
    ...HELPERS.map((h) => [h.dest, 0o755] as const),
  ]);
  for (const f of a.recipe.fileSources) {
    const dest = path.join(stage, f.dest);
    await mkdir(path.dirname(dest), { recursive: true });
    await rm(dest, { force: true });
    await copyFile(f.src, dest);
    if (f.mode !== null) explicit.set(f.dest.replace(/^\/+/, ''), f.mode);
  }
  await writeFile(
    path.join(stage, 'etc/mvirt-image'),
    `name=${a.recipe.name}\n` + a.debs.map((d) => `deb=${d.name} ${d.version}\n`).join(''),
  );
  await ldconfig(stage, progress);
  await normaliseModes(stage, explicit);
  await chmod(path.join(stage, 'tmp'), 0o1777);
  await chmod(path.join(stage, 'root'), 0o700);
  // Default zstd -15 with squashfs's 128 KiB blocks, measured for the default
  // image (images/README.md, Size): xz with 1 MiB blocks was 22% smaller but
  // doubled the agent's start under TCG, zstd -19 with 1 MiB blocks 7%
  // smaller and slower to boot; every page fault decompresses a whole block.
  await makeSquashfs({
    stage,
    out: a.outFile,
    comp: a.recipe.rootfs.compression,
    ...(a.recipe.rootfs.level !== undefined ? { level: a.recipe.rootfs.level } : {}),
    sde: a.sde,
  });
}

/**
 * A recipe's `exclude`: removed after the packages are unpacked (so their
 * configuration and ldconfig never see them), never through a package's
 * symlink out of the root. A path the packages do not install is a warning:
 * a new package version may have moved it.
 */
async function excludePaths(
  stage: string,
  paths: readonly string[],
  progress: Progress,
): Promise<void> {
  for (const p of paths) {
    const rel = p.replace(/^\/+/, '');
    await assertNoSymlinkDirs(stage, path.dirname(rel));
    const at = path.join(stage, rel);
    if ((await lstat(at).catch(() => null)) === null) {
      progress.warn(`exclude: ${p} is not in the packages (nothing to leave out)`);
      continue;
    }
    await rm(at, { recursive: true, force: true });
  }
}

/**
 * Debian 12 packages still ship /bin, /lib, /lib64 (usrmerge happens at
 * install time). Merge them into /usr and leave the usual symlinks, so that
 * /lib64/ld-linux-x86-64.so.2 (the agent's ELF interpreter) resolves.
 */
async function mergeUsr(stage: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'lib', 'lib64']) {
    const top = path.join(stage, d);
    const usr = path.join(stage, 'usr', d);
    await mkdir(usr, { recursive: true });
    if (existsSync(top)) {
      const st = await lstat(top);
      if (st.isDirectory()) {
        await mergeInto(top, usr);
        await rm(top, { recursive: true, force: true });
      } else await rm(top, { force: true });
    }
    await symlink(`usr/${d}`, top);
  }
}

async function mergeInto(from: string, to: string): Promise<void> {
  for (const name of await readdir(from)) {
    const src = path.join(from, name);
    const dst = path.join(to, name);
    const st = await lstat(src);
    if (st.isDirectory() && existsSync(dst) && (await lstat(dst)).isDirectory())
      await mergeInto(src, dst);
    else {
      await rm(dst, { recursive: true, force: true });
      await rename(src, dst);
    }
  }
}
