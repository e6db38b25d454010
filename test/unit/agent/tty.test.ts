/**
 * tty jobs on the agent side, without a VM: the agent (guest-agent/jobs.ts,
 * tty.ts) runs jobs under the µOS's real mvirt-pty (initramfs/src/
 * mvirt-pty.c, built here as the image builder builds it) on this host.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { PTY_HELPER } from '../../../images/helpers.js';
import { TEST_AGENT_OPTIONS } from '../../../harness/agent-options.js';
import { builtHelper } from '../../../harness/vsock-helper.js';
import { jobOutput, nextId, startHarness, type Harness } from '../../support/agent-harness.js';

let h: Harness;
let dir: string;
before(async () => {
  // A keystroke's reply waits this long for its echo here (20 ms in the
  // µOS): room for a loaded machine, so the echo surely goes first.
  h = await startHarness({ agent: { jobs: { ...TEST_AGENT_OPTIONS.jobs, echoWaitMs: 1000 } } });
  dir = mkdtempSync(path.join(os.tmpdir(), 'agent-tty-'));
  h.platform.tty.helper = await builtHelper(PTY_HELPER);
  h.platform.tty.sizeDir = path.join(dir, 'tty');
});
after(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

const exec = (jobId: string, msg: Record<string, unknown>) =>
  h.request('exec', { id: nextId(), jobId, ...msg });

/** Resolves once the job's output (all of it so far) matches. */
const outputMatches = (jobId: string, re: RegExp) =>
  h.waitFor('output', () => re.test(jobOutput(h, jobId)));

const type = (jobId: string, text: string) => h.send('stdin', { jobId, data: Buffer.from(text) });

/** Processes whose command line is exactly `argv` (to see a guest command start). */
function running(argv: string[]): number[] {
  const want = `${argv.join('\0')}\0`;
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8') === want;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Until a process of `argv` exists (no event tells; /proc is read every 20 ms). */
async function untilRunning(argv: string[]): Promise<void> {
  for (let i = 0; i < 500 && running(argv).length === 0; i++)
    await new Promise((r) => setTimeout(r, 20));
  assert.notEqual(running(argv).length, 0, `${argv.join(' ')} never started`);
}

test('a tty job sees a terminal of its size; stdout and stderr come merged', async () => {
  const jobId = nextId('job');
  const reply = await exec(jobId, {
    argv: ['sh', '-c', 'stty size; test -t 0 && test -t 1 && echo is-a-tty; echo to-stderr >&2'],
    tty: { cols: 100, rows: 30 },
  });
  assert.equal(reply.ok, true);
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 0);
  const out = jobOutput(h, jobId, 'stdout');
  assert.match(out, /^30 100\r\n/);
  assert.match(out, /is-a-tty\r\n/);
  assert.match(out, /to-stderr\r\n/);
  assert.equal(jobOutput(h, jobId, 'stderr'), '');
  // Entered its own group before the command ran, though it has no limits.
  assert.deepEqual(h.platform.groups.get(jobId)?.limits, {});
});

test('an interactive shell: line editing input, resize, Ctrl-C of a command, exit code', async () => {
  const jobId = nextId('job');
  const reply = await exec(jobId, {
    argv: ['sh'],
    env: { PS1: 'prompt$ ' },
    tty: { cols: 80, rows: 24 },
    stdinOpen: true,
  });
  assert.equal(reply.ok, true);
  await outputMatches(jobId, /prompt\$ $/);
  await type(jobId, 'stty size\n');
  await outputMatches(jobId, /\r\n24 80\r\n/);

  const resized = await h.request('resize', { id: nextId(), jobId, cols: 132, rows: 50 });
  assert.deepEqual(resized.result, { running: true });
  // The reply says mvirt-pty was signalled; it sets the size as it wakes, so
  // on a loaded machine a line typed at once may still see the old one.
  for (let i = 0; i < 20 && !/\r\n50 132\r\n/.test(jobOutput(h, jobId)); i++) {
    const seen = (jobOutput(h, jobId).match(/\r\n\d+ \d+\r\n/g) ?? []).length;
    await type(jobId, 'stty size\n');
    await h.waitFor(
      'output',
      () => (jobOutput(h, jobId).match(/\r\n\d+ \d+\r\n/g) ?? []).length > seen,
    );
  }
  assert.match(jobOutput(h, jobId), /\r\n50 132\r\n/);

  await type(jobId, 'sleep 4712\n');
  await untilRunning(['sleep', '4712']);
  await type(jobId, '\x03'); // Ctrl-C: the line discipline makes it SIGINT
  await type(jobId, 'echo status-$?\n');
  await outputMatches(jobId, /status-130\r\n/);

  await type(jobId, 'exit 3\n');
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 3);
  assert.equal(exit.signal, null);
  assert.equal(running(['sleep', '4712']).length, 0);
  // The size file went with the job.
  assert.deepEqual(readdirSync(h.platform.tty.sizeDir), []);
});

test('a keystroke is answered after its echo; input that echoes nothing all the same', async () => {
  const jobId = nextId('job');
  await exec(jobId, {
    argv: ['sh'],
    env: { PS1: 'prompt$ ' },
    tty: { cols: 80, rows: 24 },
    stdinOpen: true,
  });
  await outputMatches(jobId, /prompt\$ $/);
  const ofJob = (r: (typeof h.received)[number]) =>
    r.kind === 'output' && (r.msg as { jobId: string }).jobId === jobId;

  // The echo of a key goes out before the key's reply (jobs.ts releaseEcho).
  const since = h.received.length;
  const id = nextId();
  const typed = await h.request('stdin', { id, jobId, data: Buffer.from('x') });
  assert.deepEqual(typed.result, { open: true });
  const after = h.received.slice(since);
  const echoAt = after.findIndex(
    (r) => ofJob(r) && Buffer.from((r.msg as { data: Uint8Array }).data).includes('x'),
  );
  const replyAt = after.findIndex((r) => r.kind === 'reply' && (r.msg as { id: string }).id === id);
  assert.ok(echoAt >= 0 && echoAt < replyAt, `echo at ${echoAt}, reply at ${replyAt}`);

  // No echo (stty -echo, a read waiting for the rest of its line): answered
  // without output, once echoWaitMs has passed.
  await type(jobId, '\x15stty -echo; echo armed; read v; stty echo; echo "v=$v"\n');
  await outputMatches(jobId, /armed\r\n$/);
  const quiet = h.received.length;
  const hidden = await h.request('stdin', { id: nextId(), jobId, data: Buffer.from('secr') });
  assert.deepEqual(hidden.result, { open: true });
  assert.equal(h.received.slice(quiet).filter(ofJob).length, 0);
  await type(jobId, 'et\n');
  await outputMatches(jobId, /v=secret\r\n/);

  await type(jobId, 'exit 0\n');
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 0);
});

test("job signals reach the tty job's processes; a signal that kills it is reported", async () => {
  const jobId = nextId('job');
  const script = 'trap "echo got-usr1; exit 7" USR1; echo ready; while :; do sleep 1; done';
  await exec(jobId, { argv: ['sh', '-c', script], tty: { cols: 80, rows: 24 } });
  await outputMatches(jobId, /ready/);
  const sent = await h.request('signal', { id: nextId(), jobId, signal: 'SIGUSR1' });
  assert.deepEqual(sent.result, { running: true });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 7);
  assert.match(jobOutput(h, jobId), /got-usr1/);

  const killed = nextId('job');
  await exec(killed, { argv: ['sh', '-c', 'kill -USR2 $$'], tty: { cols: 80, rows: 24 } });
  const e2 = await h.waitFor('exit', (e) => e.jobId === killed);
  assert.equal(e2.exitCode, null);
  assert.equal(e2.signal, 'SIGUSR2');
});

test('a tty job times out like any job', async () => {
  const jobId = nextId('job');
  await exec(jobId, { argv: ['sleep', '4712'], tty: { cols: 80, rows: 24 }, timeoutMs: 300 });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.timedOut, true);
  assert.equal(exit.signal, 'SIGTERM');
});

test('a command that cannot run: exit 127 and why, as a shell says it', async () => {
  const jobId = nextId('job');
  await exec(jobId, { argv: ['no-such-command-here'], tty: { cols: 80, rows: 24 } });
  const exit = await h.waitFor('exit', (e) => e.jobId === jobId);
  assert.equal(exit.exitCode, 127);
  assert.match(jobOutput(h, jobId, 'stderr'), /no-such-command-here: No such file or directory/);
});

test('resize: not running for a job without a tty, refused sizes and unknown jobs', async () => {
  const plain = nextId('job');
  await exec(plain, { argv: ['cat'], stdinOpen: true });
  const r = await h.request('resize', { id: nextId(), jobId: plain, cols: 90, rows: 20 });
  assert.deepEqual(r.result, { running: false });
  await h.send('stdin', { jobId: plain, data: Buffer.alloc(0), eof: true });
  await h.waitFor('exit', (e) => e.jobId === plain);

  for (const bad of [
    { cols: 0, rows: 20 },
    { cols: 80, rows: 5000 },
    { cols: 80.5, rows: 20 },
    { cols: 80 },
  ]) {
    const reply = await h.request('resize', { id: nextId(), jobId: plain, ...bad });
    assert.equal(reply.ok, false, JSON.stringify(bad));
    assert.equal(reply.error?.code, 'BAD_MESSAGE');
  }
  const badExec = await exec(nextId('job'), { argv: ['true'], tty: { cols: 10000, rows: 1 } });
  assert.equal(badExec.error?.code, 'BAD_MESSAGE');
  const none = await h.request('resize', { id: nextId(), jobId: 'job-nope', cols: 80, rows: 24 });
  assert.equal(none.error?.code, 'JOB_NOT_FOUND');
});

test('garbage resizes from the host side are refused by the schema and leave the terminal as it was', async () => {
  const jobId = nextId('job');
  const reply = await exec(jobId, {
    argv: ['sh'],
    env: { PS1: 'prompt$ ' },
    tty: { cols: 70, rows: 21 },
    stdinOpen: true,
  });
  assert.equal(reply.ok, true);
  await outputMatches(jobId, /prompt\$ $/);
  for (const bad of [
    { jobId, cols: -1, rows: 20 },
    { jobId, cols: '90', rows: 20 },
    { jobId, cols: 90, rows: Number.NaN },
    { jobId, cols: 90, rows: 2 ** 40 },
    { jobId, cols: 90, rows: 20, sizeFile: '/etc/passwd' },
    { jobId: '../../etc/passwd', cols: 90, rows: 20 },
    { jobId: `${jobId}\n`, cols: 90, rows: 20 },
    { jobId: 'x'.repeat(10_000), cols: 90, rows: 20 },
    { jobId: [jobId], cols: 90, rows: 20 },
  ]) {
    const r = await h.request('resize', { id: nextId(), ...bad });
    assert.equal(r.ok, false, JSON.stringify(bad).slice(0, 80));
    assert.equal(r.error?.code, 'BAD_MESSAGE', JSON.stringify(bad).slice(0, 80));
  }
  // None reached mvirt-pty: the job's terminal keeps the size it started with.
  await type(jobId, 'stty size\n');
  await outputMatches(jobId, /\r\n21 70\r\n/);
  await type(jobId, 'exit 0\n');
  assert.equal((await h.waitFor('exit', (e) => e.jobId === jobId)).exitCode, 0);
  assert.deepEqual(readdirSync(h.platform.tty.sizeDir), []);
});
