/**
 * The job launcher: the µOS's mvirt-launch (initramfs/src/mvirt-launch.c,
 * built here as the image builder builds it) spoken to raw, with good and
 * garbage frames, and the agent's side of it (guest-agent/platform/
 * launcher.ts): jobs as a ChildProcess would be, and no job lost when the
 * launcher dies.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createLauncher } from '../../../guest-agent/platform/launcher.js';
import type { Proc, SpawnRequest } from '../../../guest-agent/platform/types.js';
import { launcherForTests } from '../../../harness/vsock-helper.js';

let dir: string;
let helper: string;
/** Not executable (mode 0644). */
let plain: string;
/** Executable, without a #! line: sh runs it, as with Node's spawn. */
let script: string;
before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'agent-launcher-'));
  helper = launcherForTests();
  plain = path.join(dir, 'plain');
  writeFileSync(plain, 'echo plain\n', { mode: 0o644 });
  script = path.join(dir, 'script');
  writeFileSync(script, 'echo script "$@"\n', { mode: 0o755 });
});
after(() => rmSync(dir, { recursive: true, force: true }));

const PATH = process.env.PATH ?? '/usr/bin:/bin';

// --- raw frames

function frame(type: string, body: Buffer): Buffer {
  const b = Buffer.concat([Buffer.from(type, 'latin1'), body]);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(b.length);
  return Buffer.concat([head, b]);
}
const u32 = (...v: number[]) =>
  Buffer.concat(v.map((n) => Buffer.from([n, n >> 8, n >> 16, n >>> 24])));
const strings = (...s: string[]) => Buffer.from(s.map((x) => `${x}\0`).join(''));
const startFrame = (
  id: number,
  argv: string[],
  env: string[] = [`PATH=${PATH}`],
  cwd = '',
  group = '',
) =>
  frame(
    'S',
    Buffer.concat([u32(id, argv.length, env.length), strings(cwd, group, ...argv, ...env)]),
  );

interface Reply {
  type: string;
  v: number[];
  stage?: string;
}

/** The launcher alone, its replies parsed as they come. */
function raw(): { c: ChildProcess; next(): Promise<Reply>; send(b: Buffer): void } {
  const c = spawn(helper, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let buf = Buffer.alloc(0);
  const replies: Reply[] = [];
  const waiting: ((r: Reply) => void)[] = [];
  c.stdout!.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32LE(0)) {
      const b = buf.subarray(4, 4 + buf.readUInt32LE(0));
      buf = buf.subarray(4 + b.length);
      const type = String.fromCharCode(b[0]!);
      const n = type === 'E' ? 2 : (b.length - 1) >> 2;
      const r: Reply = { type, v: [...Array(n).keys()].map((i) => b.readUInt32LE(1 + 4 * i)) };
      if (type === 'E') r.stage = String.fromCharCode(b[9]!);
      const w = waiting.shift();
      if (w) w(r);
      else replies.push(r);
    }
  });
  return {
    c,
    next: () => new Promise((r) => (replies.length ? r(replies.shift()!) : waiting.push(r))),
    send: (b) => void c.stdin!.write(b),
  };
}

test('raw: a job runs in its own session, in its cwd and group; its pipes open through /proc; its exit is reported', async () => {
  const l = raw();
  const procs = path.join(dir, 'procs');
  l.send(
    startFrame(
      7,
      ['sh', '-c', 'echo $$ $(ps -o pgid= -p $$) $(pwd) $(cat "$0"); read x; exit 3', procs],
      [`PATH=${PATH}`],
      dir,
      procs,
    ),
  );
  const p = await l.next();
  assert.equal(p.type, 'P');
  const [id, pid, fin, fout] = p.v as [number, number, number, number, number];
  assert.equal(id, 7);
  const out = openSync(`/proc/${l.c.pid}/fd/${fout}`, 'r');
  const inp = openSync(`/proc/${l.c.pid}/fd/${fin}`, 'w');
  l.send(frame('C', u32(7)));
  writeFileSync(inp, 'go\n');
  const text = readFileSync(out, 'utf8'); // to EOF: the launcher's copy is closed
  assert.equal(text.trim().split(/\s+/).join(' '), `${pid} ${pid} ${dir} 0`);
  const x = await l.next();
  assert.deepEqual(x, { type: 'X', v: [pid, 3 << 8] });
  l.c.stdin!.end();
  assert.deepEqual(await once(l.c, 'exit'), [0, null]);
});

test('raw: exec failures come back as errno (stage x) and are reaped quietly; garbage is refused and the launcher goes on', async () => {
  const l = raw();
  l.send(startFrame(1, ['no-such-command-here']));
  assert.deepEqual(await l.next(), { type: 'E', v: [1, os.constants.errno.ENOENT], stage: 'x' });
  l.send(startFrame(2, [plain]));
  assert.deepEqual(await l.next(), { type: 'E', v: [2, os.constants.errno.EACCES], stage: 'x' });
  l.send(startFrame(3, ['/bin/true'], [], '/no/such/dir'));
  assert.deepEqual(await l.next(), { type: 'E', v: [3, os.constants.errno.ENOENT], stage: 'x' });
  const EINVAL = os.constants.errno.EINVAL;
  // An unknown type, a short start, no argv, counts beyond the strings, a string without its NUL, bytes left over.
  l.send(frame('Z', u32(4)));
  l.send(frame('S', u32(5)));
  l.send(frame('S', Buffer.concat([u32(6, 0, 0), strings('', '')])));
  l.send(frame('S', Buffer.concat([u32(7, 5, 9), strings('', '', 'x')])));
  l.send(frame('S', Buffer.concat([u32(8, 1, 0), strings('', ''), Buffer.from('/bin/true')])));
  l.send(frame('S', Buffer.concat([u32(9, 1, 0), strings('', '', '/bin/true', 'extra')])));
  l.send(frame('S', Buffer.concat([u32(10, 0xffffffff, 0xffffffff), strings('', '', 'x')])));
  for (const id of [4, 5, 6, 7, 8, 9, 10])
    assert.deepEqual(await l.next(), { type: 'E', v: [id, EINVAL], stage: 'l' });
  l.send(frame('C', u32(12345))); // nothing of that id: ignored
  l.send(startFrame(11, ['/bin/true']));
  const p = await l.next();
  assert.equal(p.type, 'P');
  assert.deepEqual(await l.next(), { type: 'X', v: [p.v[1]!, 0] });
  // No X came for the failed ones: the next reply is this job's.
  l.send(frame('C', u32(11)));
  l.c.stdin!.end();
  assert.deepEqual(await once(l.c, 'exit'), [0, null]);
});

test('raw: a frame longer than any request ends the launcher', async () => {
  const l = raw();
  const stderr: Buffer[] = [];
  l.c.stderr!.on('data', (d: Buffer) => stderr.push(d));
  l.send(u32(0x7fffffff));
  assert.deepEqual(await once(l.c, 'exit'), [2, null]);
  assert.match(Buffer.concat(stderr).toString(), /not the agent's/);
});

// --- the agent's side

const req = (argv: string[], o: Partial<SpawnRequest> = {}): SpawnRequest => ({
  argv,
  env: { PATH },
  ...o,
});

/** Everything a job said and how it ended. */
function outcome(p: Proc, stdin?: string, keepOpen = false) {
  return new Promise<{
    out: string;
    err: string;
    exit: unknown[];
    error?: Error;
    events: string[];
  }>((resolve) => {
    const r = { out: '', err: '', exit: [] as unknown[], events: [] as string[] };
    p.on('error', (error) => resolve({ ...r, error }));
    p.on('spawn', () => {
      r.events.push('spawn');
      p.stdout!.on('data', (d: Buffer) => (r.out += d.toString()));
      p.stderr!.on('data', (d: Buffer) => (r.err += d.toString()));
      p.stdin!.on('error', () => undefined);
      if (!keepOpen) p.stdin!.end(stdin);
    });
    p.on('exit', (...a) => {
      r.events.push('exit');
      r.exit = a;
    });
    p.on('close', () => {
      r.events.push('close');
      resolve(r);
    });
  });
}

const nodeSpawn = (r: SpawnRequest) =>
  spawn(r.argv[0]!, r.argv.slice(1), { env: r.env, cwd: r.cwd, detached: true, stdio: 'pipe' });

test('jobs through the launcher: stdin streams, exit codes and signals, spawn errors as Node gives them', async () => {
  const l = createLauncher(helper);
  const cat = await outcome(
    l.spawn(req(['sh', '-c', 'cat; echo err >&2; exit 4']), () => assert.fail('no fallback')),
    'abc',
  );
  assert.deepEqual(cat, {
    out: 'abc',
    err: 'err\n',
    exit: [4, null],
    events: ['spawn', 'exit', 'close'],
  });
  const killed = await outcome(
    l.spawn(req(['sh', '-c', 'kill -USR1 $$']), () => assert.fail('no fallback')),
  );
  assert.deepEqual(killed.exit, [null, 'SIGUSR1']);
  for (const argv of [['no-such-command-here'], [plain]]) {
    const ours = (await outcome(l.spawn(req(argv), () => assert.fail('no fallback')))).error;
    const node = (await outcome(nodeSpawn(req(argv)) as unknown as Proc)).error;
    assert.ok(ours && node);
    for (const k of ['message', 'code', 'errno', 'syscall', 'path'] as const)
      assert.deepEqual((ours as never)[k], (node as never)[k], k);
  }
  const viaSh = await outcome(l.spawn(req([script, 'a']), () => assert.fail('no fallback')));
  assert.equal(viaSh.out, 'script a\n');
  // A job that closed its stdin before the agent could open it: writes fail, nothing throws.
  const closed = await outcome(
    l.spawn(req(['sh', '-c', 'exec 0<&-; echo shut']), () => assert.fail('no fallback')),
  );
  assert.deepEqual(closed.exit, [0, null]);
  assert.equal(closed.out, 'shut\n');
});

test('a launcher that dies: its requests in flight are spawned by Node, its running jobs still end, the next job has a new launcher', async () => {
  const l = createLauncher(helper);
  const first = l.spawn(req(['cat']), () => assert.fail('no fallback'));
  const firstDone = outcome(first, undefined, true);
  await new Promise((r) => first.on('spawn', () => r(undefined)));
  const pid1 = l.pid()!;
  // Stopped, it takes a request it never answers; killed, the request is Node's.
  process.kill(pid1, 'SIGSTOP');
  let fellBack = 0;
  const inFlight = outcome(
    l.spawn(req(['sh', '-c', 'echo ran']), () => {
      fellBack++;
      return nodeSpawn(req(['sh', '-c', 'echo ran']));
    }),
  );
  process.kill(pid1, 'SIGKILL');
  const r = await inFlight;
  assert.equal(fellBack, 1);
  assert.deepEqual([r.out, r.exit], ['ran\n', [0, null]]);
  // The cat it had started runs on; its exit status went with the launcher.
  first.stdin!.end('bye');
  assert.deepEqual(await firstDone, {
    out: 'bye',
    err: '',
    exit: [null, null],
    events: ['spawn', 'exit', 'close'],
  });
  const next = await outcome(l.spawn(req(['echo', 'again']), () => assert.fail('no fallback')));
  assert.equal(next.out, 'again\n');
  assert.notEqual(l.pid(), pid1);
});

test('no launcher to be had (not executable): every job is spawned by Node', async () => {
  const bad = path.join(dir, 'not-a-launcher');
  writeFileSync(bad, 'not a program', { mode: 0o644 });
  const l = createLauncher(bad);
  for (let i = 0; i < 5; i++) {
    const r = await outcome(
      l.spawn(req(['echo', String(i)]), () => nodeSpawn(req(['echo', String(i)]))),
    );
    assert.equal(r.out, `${i}\n`);
  }
});
