/**
 * `mvirt cp`: files and directories into and out of a running VM, through
 * the fs.write / fs.read RPCs (protocol/fs-transfer.ts). A directory goes as
 * a tar stream: made here by the host's tar and unpacked by the guest's
 * (busybox) once the archive is complete and checked, or packed by the
 * guest's and unpacked here from a checked temporary file. A file read out
 * is written beside its target and renamed into place once its sha256 matches.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from './args.js';
import { str, type Command, type Context } from './command.js';
import { EXIT } from './exit.js';
import { bytes, json } from './output.js';

/** `VM:/path` (a VM name, a colon, an absolute path); anything else is local. */
const REMOTE = /^([A-Za-z0-9][A-Za-z0-9._-]{0,63}):(.*)$/;

interface Remote {
  vm: string;
  path: string;
}

function remoteOf(arg: string): Remote | null {
  const m = REMOTE.exec(arg);
  if (!m) return null;
  if (!m[2]!.startsWith('/'))
    throw new UsageError(`${arg}: give the path in the VM in full (VM:/root/file)`, 'cp');
  return { vm: m[1]!, path: m[2]! };
}

/** A progress line on a terminal, at most every 200 ms. */
function progress(ctx: Context, total: number | null, enabled: boolean) {
  const t0 = ctx.io.now();
  let last = 0;
  let shown = false;
  const line = (n: number) => {
    const s = (ctx.io.now() - t0) / 1000;
    const rate = s > 0 ? `${bytes(n / s)}/s` : '';
    const of =
      total !== null ? ` / ${bytes(total)}  ${Math.floor((n / Math.max(total, 1)) * 100)}%` : '';
    return `\r\u001b[K${bytes(n)}${of}  ${rate}`;
  };
  return {
    tick(n: number) {
      if (!enabled) return;
      const now = ctx.io.now();
      if (now - last < 200) return;
      last = now;
      shown = true;
      ctx.io.stderr.write(line(n));
    },
    done(n: number) {
      if (enabled && shown) ctx.io.stderr.write(`${line(n)}\n`);
    },
  };
}

/** The host's tar (GNU tar on Debian): exit status and the end of its stderr. */
function tar(args: string[], stdout: 'pipe' | 'ignore') {
  const child = spawn('tar', args, { stdio: ['ignore', stdout, 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-2048)));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`tar: ${e.message}`)));
    child.once('exit', (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`tar ${args[0]}: ${err.trim() || `exit ${code ?? signal}`}`)),
    );
  });
  return { child, done };
}

/** tar's output, ending in an error if tar fails (so a broken archive is never sent as complete). */
async function* packLocal(dir: string): AsyncGenerator<Buffer> {
  const t = tar(['-c', '-f', '-', '-C', dir, '.'], 'pipe');
  for await (const chunk of t.child.stdout!) yield chunk as Buffer;
  await t.done;
}

const statOr = (p: string) => stat(p).catch(() => null);

async function copyIn(
  ctx: Context,
  src: string,
  dst: Remote,
  p: { mode?: number; uid?: number; gid?: number; quiet: boolean },
) {
  const local = await stat(src).catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(
      `${src}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`,
      'cp',
    );
  });
  const c = await ctx.client();
  const { sendFile } = await import('../../protocol/fs-transfer.js');
  // Into a directory that is there: under the source's name (as cp does).
  const there = await c
    .call('fs.stat', { vm: dst.vm, path: dst.path, follow: true })
    .catch((err: unknown) => {
      if ((err as { code?: string }).code === 'FILE_NOT_FOUND') return null;
      throw err;
    });
  const target =
    there?.type === 'dir' ? path.posix.join(dst.path, path.basename(path.resolve(src))) : dst.path;
  const show = progress(
    ctx,
    local.isDirectory() ? null : local.size,
    ctx.io.stderr.isTTY === true && !p.quiet,
  );
  const owner = {
    ...(p.uid !== undefined ? { uid: p.uid } : {}),
    ...(p.gid !== undefined ? { gid: p.gid } : {}),
  };
  const end = local.isDirectory()
    ? await sendFile(c, {
        vm: dst.vm,
        path: target,
        source: packLocal(src),
        unpack: 'tar',
        ...(p.mode !== undefined ? { mode: p.mode } : {}),
        ...owner,
        onProgress: show.tick,
      })
    : await sendFile(c, {
        vm: dst.vm,
        path: target,
        source: createReadStream(src, { highWaterMark: 256 * 1024 }),
        mode: p.mode ?? local.mode & 0o777,
        ...owner,
        onProgress: show.tick,
      });
  show.done(end.size);
  return { to: `${dst.vm}:${target}`, ...end };
}

async function copyOut(ctx: Context, src: Remote, dst: string, quiet: boolean) {
  const c = await ctx.client();
  const { receiveFile } = await import('../../protocol/fs-transfer.js');
  const st = await c.call('fs.stat', { vm: src.vm, path: src.path, follow: true });
  const here = await statOr(dst);
  const target = here?.isDirectory() ? path.join(dst, path.posix.basename(src.path)) : dst;
  if (st.type !== 'file' && st.type !== 'dir')
    throw new UsageError(`${src.vm}:${src.path} is a ${st.type}: copy a file or a directory`, 'cp');
  const dir = st.type === 'dir';
  const show = progress(ctx, dir ? null : st.size, ctx.io.stderr.isTTY === true && !quiet);
  // Into a hidden file beside the target, renamed (or unpacked) once checked.
  const part = path.join(
    path.dirname(target),
    `.${path.basename(target)}.mvirt-${process.pid}-${Date.now()}.part`,
  );
  const fh = await open(part, 'wx', 0o600);
  try {
    let pos = 0;
    const end = await receiveFile(c, {
      vm: src.vm,
      path: src.path,
      ...(dir ? { pack: 'tar' as const } : {}),
      sink: async (b) => {
        await fh.write(b, 0, b.length, pos);
        pos += b.length;
      },
      onProgress: show.tick,
    });
    await fh.sync();
    await fh.close();
    if (dir) {
      await mkdir(target, { recursive: true });
      // The archive is the guest's: GNU tar refuses members with `..` or a
      // leading /, delays symbolic links, and keeps our own owner.
      await tar(['-x', '-f', part, '-C', target, '--no-same-owner'], 'ignore').done;
      await rm(part, { force: true });
    } else {
      await chmod(part, st.mode & 0o777);
      await rename(part, target);
    }
    show.done(end.size);
    return { to: target, ...end };
  } catch (err) {
    await fh.close().catch(() => undefined);
    await rm(part, { force: true });
    throw err;
  }
}

function parseOwner(s: string | undefined): { uid?: number; gid?: number } {
  if (s === undefined) return {};
  const m = /^(\d+)(?::(\d+))?$/.exec(s);
  if (!m) throw new UsageError(`--owner ${s}: expected UID or UID:GID (numbers)`, 'cp');
  return { uid: Number(m[1]), ...(m[2] !== undefined ? { gid: Number(m[2]) } : {}) };
}

export const cpCommands: Command[] = [
  {
    name: 'cp',
    summary: 'Copy a file or directory into or out of a running VM.',
    args: ['SRC', 'DST'],
    description:
      'One of SRC and DST is VM:PATH (PATH absolute in the guest), the other a local\n' +
      "path. Into an existing directory, the copy takes the source's name. Files are\n" +
      'checked (size, sha256) before they are put in place; a cut copy leaves only a\n' +
      'hidden .NAME.mvirt-*.part file. Directories go as tar streams. Progress shows\n' +
      'on a terminal. Needs the operator role on the VM.',
    options: {
      mode: {
        type: 'string',
        value: 'OCTAL',
        help: "the file's mode in the guest (default: the source's)",
      },
      owner: { type: 'string', value: 'UID[:GID]', help: 'owner in the guest (default root)' },
      quiet: { type: 'boolean', short: 'q', help: 'no progress line' },
    },
    examples: [
      'mvirt cp ./app.tar.gz web-1:/root/',
      'mvirt cp web-1:/var/log/app.log .',
      'mvirt cp ./site web-1:/srv/www',
    ],
    run: async (ctx, p) => {
      const [a, b] = p.positionals as [string, string];
      const from = remoteOf(a);
      const to = remoteOf(b);
      if ((from === null) === (to === null))
        throw new UsageError('give exactly one of SRC and DST as VM:PATH', 'cp');
      const modeText = str(p, 'mode');
      let mode: number | undefined;
      if (modeText !== undefined) {
        if (!/^[0-7]{1,4}$/.test(modeText))
          throw new UsageError(`--mode ${modeText}: octal, e.g. 644`, 'cp');
        mode = parseInt(modeText, 8);
      }
      const quiet = p.values.quiet === true || ctx.globals.json === true;
      const r = to
        ? await copyIn(ctx, a, to, {
            ...(mode !== undefined ? { mode } : {}),
            ...parseOwner(str(p, 'owner')),
            quiet,
          })
        : await copyOut(ctx, from!, b, quiet);
      if (ctx.globals.json) ctx.out(json(r));
      else if (!p.values.quiet)
        ctx.out(`copied ${bytes(r.size)} to ${r.to} (sha256 ${r.sha256})\n`);
      return EXIT.OK;
    },
  },
];
