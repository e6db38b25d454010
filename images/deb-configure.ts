/**
 * What Debian's maintainer scripts would have done after unpacking, done
 * without running any package code: a build runs on the host, and a
 * maintainer script is a shell script from the archive (as root, it could
 * write anywhere on the host). Only the effects a read-only µOS needs:
 *
 * - alternatives: `update-alternatives --install LINK NAME PATH PRIO` lines
 *   read (not run) from each postinst; per NAME the highest priority whose
 *   PATH is in the image wins (gcc → /usr/bin/cc, cpp → /lib/cpp);
 * - ca-certificates: /etc/ssl/certs/ca-certificates.crt, the bundle
 *   update-ca-certificates makes from every certificate the package ships
 *   (debconf's default: all enabled), and the .pem links beside it;
 * - the dynamic linker's cache: the host's own ldconfig (static, no package
 *   code) with `-r` into the root, in an unprivileged user namespace when the
 *   build does not run as root;
 * - Python's byte code (py3compile in python3's postinst): the host's own
 *   python3.X of the same minor version compiles the image's .py files
 *   (compiling runs none of them) into unchecked-hash .pyc, which a read-only
 *   root never has to recheck. Without them every `python3` start compiles
 *   what it imports: measured 2-2.7x the start-up time on the host, far more
 *   under TCG.
 *
 * Everything else a postinst does (users, debconf questions, byte-compiling,
 * services) is not done; images/README.md says which packages that leaves
 * out. Files are written only through directories checked not to be
 * symlinks, so a hostile package cannot point a write at the host.
 */
import {
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { MvirtError } from '../protocol/errors.js';
import type { DebInput } from './debian.js';
import type { Progress } from './progress.js';
import { run } from './run.js';

export interface Alternative {
  link: string;
  name: string;
  path: string;
  priority: number;
  pkg: string;
}

/**
 * The literal `update-alternatives --install` calls of a maintainer script
 * (line continuations joined, comments dropped). Calls with shell variables
 * or quotes are skipped: they cannot be read without running the script.
 */
export function parseAlternatives(script: string, pkg: string): Alternative[] {
  const joined = script.replace(/\\\n/g, ' ');
  const out: Alternative[] = [];
  for (const raw of joined.split('\n')) {
    const line = raw.replace(/(^|\s)#.*$/, '');
    const at = line.indexOf('update-alternatives');
    if (at === -1) continue;
    const words = line.slice(at).trim().split(/\s+/);
    const i = words.indexOf('--install');
    if (i === -1) continue;
    const [link, name, target, prio] = words.slice(i + 1, i + 5);
    if (link === undefined || name === undefined || target === undefined || prio === undefined)
      continue;
    if (![link, name, target, prio].every((w) => /^[A-Za-z0-9_./+-]+$/.test(w))) continue;
    if (!link.startsWith('/') || !target.startsWith('/') || !/^-?\d+$/.test(prio)) continue;
    out.push({ link, name, path: target, priority: Number(prio), pkg });
  }
  return out;
}

/** Throws unless every directory from the root down to `rel` is a real directory (or missing). */
export async function assertNoSymlinkDirs(root: string, rel: string): Promise<void> {
  let p = root;
  for (const part of rel.split('/').filter((s) => s !== '')) {
    p = path.join(p, part);
    let st;
    try {
      st = await lstat(p);
    } catch {
      return;
    }
    if (!st.isDirectory())
      throw new MvirtError(
        'BUILD_FAILED',
        `the packages make /${path.relative(root, p)} a ${st.isSymbolicLink() ? 'symlink' : 'file'}, where the builder writes /${rel}: remove the package that ships it`,
      );
  }
}

/** Write a file inside the root disk, never through a symlinked directory. */
async function writeInside(root: string, rel: string, data: string): Promise<void> {
  await assertNoSymlinkDirs(root, path.dirname(rel));
  await mkdir(path.join(root, path.dirname(rel)), { recursive: true });
  await rm(path.join(root, rel), { force: true });
  await writeFile(path.join(root, rel), data);
}

/** /bin, /sbin, /lib, /lib64 are symlinks into /usr in the µOS (layout.ts's usr-merge). */
const merged = (rel: string): string => rel.replace(/^\/*(bin|sbin|lib|lib64)\//, 'usr/$1/');

async function linkInside(root: string, relPath: string, target: string): Promise<void> {
  const rel = merged(relPath);
  await assertNoSymlinkDirs(root, path.dirname(rel));
  await mkdir(path.join(root, path.dirname(rel)), { recursive: true });
  await rm(path.join(root, rel), { force: true });
  await symlink(target, path.join(root, rel));
}

async function isFileInside(root: string, abs: string): Promise<boolean> {
  // Follow symlinks only within the root (alternatives often point at links, /usr/bin/gcc → gcc-12).
  let p = merged(abs);
  for (let hops = 0; hops < 16; hops++) {
    let st;
    try {
      st = await lstat(path.join(root, p));
    } catch {
      return false;
    }
    if (!st.isSymbolicLink()) return st.isFile();
    const t = await readlink(path.join(root, p));
    p = merged(t.startsWith('/') ? t : path.posix.join('/', path.posix.dirname(p), t));
  }
  return false;
}

/** The alternatives of the packages' postinst scripts, applied in the root. */
export async function applyAlternatives(
  root: string,
  debs: readonly DebInput[],
  work: string,
): Promise<Alternative[]> {
  const all: Alternative[] = [];
  for (const d of debs) {
    const ctl = path.join(work, `control-${d.name}`);
    await run('dpkg-deb', ['--control', d.file, ctl]);
    const script = await readFile(path.join(ctl, 'postinst'), 'utf8').catch(() => '');
    all.push(...parseAlternatives(script, d.name));
    await rm(ctl, { recursive: true, force: true });
  }
  const best = new Map<string, Alternative>();
  for (const a of all) {
    if (!(await isFileInside(root, a.path))) continue;
    const cur = best.get(a.name);
    if (cur === undefined || a.priority > cur.priority) best.set(a.name, a);
  }
  const chosen = [...best.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const a of chosen) {
    await linkInside(root, `etc/alternatives/${a.name}`, a.path);
    await linkInside(root, a.link.replace(/^\/+/, ''), `/etc/alternatives/${a.name}`);
  }
  return chosen;
}

const CA_DIR = 'usr/share/ca-certificates';

/** update-ca-certificates' result: every shipped certificate, enabled, in one bundle. */
export async function caBundle(root: string): Promise<number> {
  await assertNoSymlinkDirs(root, CA_DIR);
  const certs: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    let names: string[];
    try {
      names = (await readdir(path.join(root, CA_DIR, rel))).sort();
    } catch {
      return;
    }
    for (const n of names) {
      const r = rel === '' ? n : `${rel}/${n}`;
      const st = await lstat(path.join(root, CA_DIR, r));
      if (st.isDirectory()) await walk(r);
      else if (st.isFile() && n.endsWith('.crt')) certs.push(r);
    }
  };
  await walk('');
  if (certs.length === 0) return 0;
  let bundle = '';
  for (const c of certs) {
    const pem = await readFile(path.join(root, CA_DIR, c), 'utf8');
    bundle += pem.endsWith('\n') ? pem : `${pem}\n`;
    await linkInside(root, `etc/ssl/certs/${path.basename(c, '.crt')}.pem`, `/${CA_DIR}/${c}`);
  }
  await writeInside(root, 'etc/ca-certificates.conf', certs.map((c) => `${c}\n`).join(''));
  await writeInside(root, 'etc/ssl/certs/ca-certificates.crt', bundle);
  return certs.length;
}

/**
 * /etc/ld.so.cache for the root, by the host's ldconfig chrooted into it
 * (`-r`; chroot needs root, or an unprivileged user namespace). libc-bin,
 * which ships /etc/ld.so.conf, is Essential and so in no closure: write it.
 */
export async function ldconfig(root: string, progress: Progress): Promise<void> {
  await assertNoSymlinkDirs(root, 'etc');
  try {
    await lstat(path.join(root, 'etc/ld.so.conf'));
  } catch {
    await writeInside(root, 'etc/ld.so.conf', 'include /etc/ld.so.conf.d/*.conf\n');
  }
  // Not on a non-root user's PATH on Debian.
  const bin = ['/usr/sbin/ldconfig', '/sbin/ldconfig'].find((p) => existsSync(p)) ?? 'ldconfig';
  const asRoot = process.getuid?.() === 0;
  const [cmd, args] = asRoot
    ? [bin, ['-X', '-r', root]]
    : ['unshare', ['--user', '--map-root-user', '--net', bin, '-X', '-r', root]];
  const r = await run(cmd, args, { allowFail: true }).catch((e: unknown) => ({
    code: 127,
    stderr: (e as Error).message,
  }));
  if (r.code !== 0)
    progress.warn(
      `no /etc/ld.so.cache (${cmd} failed: ${r.stderr.trim().split('\n').slice(-1).join('')}): libraries outside /usr/lib/x86_64-linux-gnu and /usr/lib will not be found; allow unprivileged user namespaces or build as root`,
    );
}

/**
 * The .py files of /usr/lib/python3.X, as regular files in real directories
 * only (a package's symlink could point the compiler at a host file), with
 * any shipped __pycache__ removed so that the compiler creates its own.
 */
async function pythonSources(root: string, rel: string, out: string[]): Promise<void> {
  for (const n of (await readdir(path.join(root, rel))).sort()) {
    const r = `${rel}/${n}`;
    const st = await lstat(path.join(root, r));
    if (n === '__pycache__') await rm(path.join(root, r), { recursive: true, force: true });
    else if (st.isDirectory()) await pythonSources(root, r, out);
    else if (st.isFile() && n.endsWith('.py')) out.push(path.join(root, r));
  }
}

/** Byte-compile the image's Python standard library with the host's python3.X, when it has that version. */
export async function compilePython(root: string, progress: Progress): Promise<void> {
  await assertNoSymlinkDirs(root, 'usr/lib');
  let libs: string[];
  try {
    libs = (await readdir(path.join(root, 'usr/lib'))).filter((n) => /^python3\.\d+$/.test(n));
  } catch {
    return;
  }
  for (const lib of libs.sort()) {
    const st = await lstat(path.join(root, 'usr/lib', lib));
    if (!st.isDirectory()) continue;
    const files: string[] = [];
    await pythonSources(root, `usr/lib/${lib}`, files);
    if (files.length === 0) continue;
    const r = await run(
      lib,
      [
        '-m',
        'compileall',
        '-q',
        '-j',
        '0',
        '--invalidation-mode',
        'unchecked-hash',
        '-s',
        root,
        '-p',
        '/',
        '-i',
        '-',
      ],
      { input: Buffer.from(files.map((f) => `${f}\n`).join('')), allowFail: true },
    ).catch(() => null);
    if (r === null || r.code !== 0)
      progress.warn(
        `/usr/lib/${lib} is not byte-compiled (${r === null ? `no ${lib} on the build host` : r.stderr.trim().split('\n').slice(-1).join('')}): python3 in the image compiles what it imports at every start; install ${lib} on the build host`,
      );
    else progress.info(`python: ${files.length} modules of /usr/lib/${lib} byte-compiled`);
  }
}

/** All of the above, in the unpacked root, before the µOS's own files go in. */
export async function configurePackages(
  root: string,
  debs: readonly DebInput[],
  work: string,
  progress: Progress,
): Promise<void> {
  const alts = await applyAlternatives(root, debs, work);
  if (alts.length > 0)
    progress.info(`alternatives: ${alts.map((a) => `${a.link} → ${a.path}`).join(', ')}`);
  const n = await caBundle(root);
  if (n > 0)
    progress.info(`ca-certificates: ${n} certificates in /etc/ssl/certs/ca-certificates.crt`);
  await compilePython(root, progress);
}
