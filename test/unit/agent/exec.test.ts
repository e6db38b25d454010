import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { DEFAULT_JOB_OPTIONS } from '../../../guest-agent/jobs.js';
import { jobOutput, nextId, startHarness, type Harness } from '../../support/agent-harness.js';

let h: Harness;
let dir: string;
before(async () => {
  h = await startHarness();
  dir = mkdtempSync(path.join(os.tmpdir(), 'agent-exec-'));
});
after(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Run a job to its exit record; returns the reply and the exit. */
async function run(msg: Record<string, unknown>) {
  const jobId = nextId('job');
  const reply = await h.request('exec', { id: nextId(), jobId, ...msg });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  return { jobId, reply, exit };
}

/** True when the process is gone (or a zombie nobody has reaped yet). */
function gone(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
  } catch {
    return true;
  }
}

test('exec with stdin: reply with the pid, output, exit 0', async () => {
  const { jobId, reply, exit } = await run({ argv: ['cat'], stdin: Buffer.from('hello\n') });
  assert.equal(reply.ok, true);
  assert.equal(typeof (reply.result as { pid: number }).pid, 'number');
  assert.equal(jobOutput(h, jobId, 'stdout'), 'hello\n');
  assert.equal(exit.exitCode, 0);
  assert.equal(exit.signal, null);
  assert.equal(exit.timedOut, false);
  assert.equal(exit.oomKilled, false);
  assert.ok(exit.finishedAt >= exit.startedAt);
  assert.equal(
    h.received.find((r) => r.invalid),
    undefined,
  );
});

test('stdinOpen: later stdin messages feed the job until eof', async () => {
  const jobId = nextId('job');
  const reply = await h.request('exec', {
    id: nextId(),
    jobId,
    argv: ['cat'],
    stdin: Buffer.from('a'),
    stdinOpen: true,
  });
  assert.equal(reply.ok, true);
  await h.send('stdin', { jobId, data: Buffer.from('b') });
  await h.send('stdin', { jobId, data: Buffer.from('c'), eof: true });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 0);
  assert.equal(jobOutput(h, jobId), 'abc');
});

test('stdout and stderr share one seq counter; chunks are bounded; exit.seq is the next seq', async () => {
  const script = 'echo out1; echo err1 >&2; head -c 200000 /dev/zero; echo err2 >&2; echo out2';
  const { jobId, exit } = await run({ argv: ['sh', '-c', script] });
  const chunks = h.all('output').filter((o) => o.jobId === jobId);
  assert.deepEqual(
    chunks.map((c) => c.seq),
    chunks.map((_, i) => i),
  );
  assert.equal(exit.seq, chunks.length);
  const max = DEFAULT_JOB_OPTIONS.chunkBytes;
  for (const c of chunks) assert.ok(c.data.length <= max, `chunk of ${c.data.length} bytes`);
  assert.ok(chunks.length >= Math.ceil(200000 / max), 'the 200 kB run is split into chunks');
  const out = jobOutput(h, jobId, 'stdout');
  assert.equal(out.length, 'out1\n'.length + 200000 + 'out2\n'.length);
  assert.ok(out.startsWith('out1\n\0') && out.endsWith('\0out2\n'));
  assert.equal(jobOutput(h, jobId, 'stderr'), 'err1\nerr2\n');
});

test('env and cwd reach the job; a non-zero exit code is reported', async () => {
  const { jobId, exit } = await run({
    argv: ['sh', '-c', 'echo "$GREETING $(pwd)"; exit 3'],
    env: { GREETING: 'hi' },
    cwd: dir,
  });
  assert.equal(exit.exitCode, 3);
  assert.equal(jobOutput(h, jobId), `hi ${dir}\n`);
});

test('spawn failure: SPAWN_FAILED reply and an exit record with the error', async () => {
  const { reply, exit } = await run({ argv: ['/nonexistent/program'] });
  assert.equal(reply.ok, false);
  assert.equal(reply.error?.code, 'SPAWN_FAILED');
  assert.match(reply.error?.message ?? '', /ENOENT/);
  assert.equal(exit.exitCode, null);
  assert.match(exit.error ?? '', /ENOENT/);
});

test('timeout kills the whole process group, escalating to SIGKILL for a child that ignores SIGTERM', async () => {
  // The grandchild ignores SIGTERM (set before it prints its pid, so no race
  // with the timeout) and keeps the pipes open: only the group-wide SIGKILL
  // after the grace period (300 ms in the harness) ends the job.
  const script = `sh -c 'trap "" TERM; echo $$; exec sleep 60' & wait`;
  const jobId = nextId('job');
  const reply = await h.request('exec', {
    id: nextId(),
    jobId,
    argv: ['sh', '-c', script],
    timeoutMs: 300,
  });
  assert.equal(reply.ok, true);
  const first = await h.waitFor('output', (o) => o.jobId === jobId);
  const grandchild = Number(Buffer.from(first.data).toString().trim());
  assert.ok(grandchild > 0);
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.timedOut, true);
  assert.equal(exit.signal, 'SIGTERM');
  assert.equal(exit.oomKilled, false);
  assert.ok(exit.finishedAt - exit.startedAt >= 300 + 300, 'ended before the SIGKILL escalation');
  // The group's SIGKILL is sent by then; its delivery is the kernel's (no
  // event reaches us for a process that is not our child): poll, bounded.
  const until = Date.now() + 5000;
  while (!gone(grandchild) && Date.now() < until) await delay(20);
  assert.ok(gone(grandchild), `grandchild ${grandchild} still alive 5 s after the job ended`);
});

test('signal SIGTERM cancels a running job; signal for an unknown job is JOB_NOT_FOUND', async () => {
  const jobId = nextId('job');
  await h.request('exec', {
    id: nextId(),
    jobId,
    argv: ['sh', '-c', 'echo started; exec sleep 60'],
  });
  await h.waitFor('output', (o) => o.jobId === jobId);
  const r = await h.request('signal', { id: nextId(), jobId, signal: 'SIGTERM' });
  assert.deepEqual(r.result, { running: true });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.signal, 'SIGTERM');
  assert.equal(exit.timedOut, false);
  const again = await h.request('signal', { id: nextId(), jobId, signal: 'SIGKILL' });
  assert.deepEqual(again.result, { running: false });
  const missing = await h.request('signal', { id: nextId(), jobId: 'nope', signal: 'SIGTERM' });
  assert.equal(missing.ok, false);
  assert.equal(missing.error?.code, 'JOB_NOT_FOUND');
});

test('a resent exec never runs twice: duplicate reply, exit and output replayed from fromSeq', async () => {
  const marker = path.join(dir, 'ran');
  const msg = { argv: ['sh', '-c', `echo x >> ${marker}; echo one; echo two >&2`] };
  const { jobId, exit } = await run(msg);
  const before = h.received.length;
  const dup = await h.request('exec', { id: nextId(), jobId, ...msg, fromSeq: 0 });
  assert.equal(dup.ok, true);
  assert.equal((dup.result as { duplicate: boolean }).duplicate, true);
  const exit2 = await h.waitFor('exit', (e) => e.jobId === jobId, { since: before });
  assert.deepEqual(exit2, exit);
  const replayed = h.all('output', before).filter((o) => o.jobId === jobId);
  assert.deepEqual(
    replayed.map((o) => o.seq),
    [...Array(exit.seq).keys()],
  );
  assert.equal(readFileSync(marker, 'utf8'), 'x\n');
});

test('a resent exec while the job still runs is recognised too', async () => {
  const jobId = nextId('job');
  const msg = { jobId, argv: ['cat'], stdinOpen: true };
  const first = await h.request('exec', { id: nextId(), ...msg });
  const dup = await h.request('exec', { id: nextId(), ...msg });
  assert.deepEqual(dup.result, { pid: (first.result as { pid: number }).pid, duplicate: true });
  await h.send('stdin', { jobId, data: Buffer.from('done'), eof: true });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 0);
  assert.equal(jobOutput(h, jobId), 'done');
  assert.equal(h.all('exit').filter((e) => e.jobId === jobId).length, 1);
});

test("an OOM kill is the job's own: counted in its group, not in the VM's", async () => {
  // Two jobs SIGKILLed from outside; the kernel (the fake's group count)
  // charged the OOM kill to the first one only.
  const start = async () => {
    const jobId = nextId('job');
    const reply = await h.request('exec', {
      id: nextId(),
      jobId,
      argv: ['sh', '-c', 'echo started; exec sleep 60'],
    });
    await h.waitFor('output', (o) => o.jobId === jobId);
    return { jobId, pid: (reply.result as { pid: number }).pid };
  };
  const hog = await start();
  const bystander = await start();
  const group = h.platform.groups.get(hog.jobId);
  assert.ok(group);
  assert.deepEqual(group.limits, {}, 'its own group, without limits');
  group.oomKills = 1;
  h.platform.files.set('/proc/vmstat', 'oom_kill 7\n'); // the VM-wide count moved too
  process.kill(hog.pid, 'SIGKILL');
  process.kill(bystander.pid, 'SIGKILL');
  const [a, b] = await Promise.all([
    h.waitFor('exit', (e) => e.jobId === hog.jobId),
    h.waitFor('exit', (e) => e.jobId === bystander.jobId),
  ]);
  assert.equal(a.oomKilled, true);
  assert.equal(b.oomKilled, false, 'another job killed at the same time is not OOM-killed');
  assert.equal(group.removed, true, 'the group goes with the job');
  assert.equal(group.entered, '0\n', 'it entered its group as it started');
  assert.equal(h.platform.groups.get(bystander.jobId)?.removed, true);
});

test("an imported image's Env, WorkingDir and Entrypoint are the job's defaults; its own win", async () => {
  h.platform.image = {
    schema: 1,
    env: { GREETING: 'from the image', PATH: process.env.PATH ?? '/usr/bin:/bin' },
    workingDir: dir,
    user: '',
    uid: 0,
    gid: 0,
    entrypoint: ['sh', '-c'],
    cmd: ['echo never'],
  };
  try {
    const a = await run({ argv: ['pwd; echo "$GREETING"'] });
    assert.equal(a.exit.exitCode, 0);
    assert.equal(jobOutput(h, a.jobId, 'stdout'), `${dir}\nfrom the image\n`);
    const b = await run({ argv: ['pwd; echo "$GREETING"'], cwd: '/', env: { GREETING: 'mine' } });
    assert.equal(jobOutput(h, b.jobId, 'stdout'), '/\nmine\n');
  } finally {
    h.platform.image = null;
  }
});
