/**
 * `mvirt exec` in-process (runCli with a memory Io standing in for a
 * terminal) against the real mvirtd, whose fake VMs run the real agent core
 * with the µOS's real mvirt-pty (built here as the image builder builds it):
 * job.run {tty}, keys through job.stdin, SIGWINCH → job.resize, Ctrl-C in
 * the guest's terminal, the exit code, raw mode undone. The same against a
 * real microVM on a real terminal: test/integration/exec-tty.test.ts.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { PTY_HELPER } from '../../../images/helpers.js';
import { builtHelper } from '../../../harness/vsock-helper.js';
import type { RequestSpy } from '../../../harness/daemon.js';
import type { DryRunPlan } from '../../../protocol/rpc.js';
import type { TtyOut } from '../../../host/cli/io.js';
import { cliJobsFixture, T } from '../../support/cli-jobs.js';
import { result, type JobDaemon } from '../../support/jobs.js';

describe('mvirt exec against mvirtd', () => {
  before(() => builtHelper(PTY_HELPER));
  const f = cliJobsFixture();
  let j: JobDaemon;
  let spy: RequestSpy;
  before(() => ({ j, spy } = f));
  const { newIo, mvirt, started, sent } = f;

  /** An io whose stdin and stdout are a terminal of cols × rows. */
  const terminal = (cols: number, rows: number) => {
    const io = newIo({ tty: true });
    Object.assign(io.stdout as TtyOut, { isTTY: true, columns: cols, rows });
    io.env.TERM = 'xterm-test';
    return io;
  };

  it('-it: a shell with its size, a resize, Ctrl-C of a command, the exit code', T, async () => {
    const io = terminal(100, 30);
    const { done, mark } = await started(
      ['exec', '-it', '--env', 'PS1=guest$ ', 'svc', '--', 'sh'],
      io,
    );
    assert.deepEqual(sent('job.run', mark), {
      vm: 'svc',
      argv: ['sh'],
      encoding: 'bytes',
      stdinOpen: true,
      tty: true,
      cols: 100,
      rows: 30,
      env: { PS1: 'guest$ ', TERM: 'xterm-test' },
    });
    await io.waitOut('guest$ ');
    assert.deepEqual(io.rawModes, [true]);
    io.stdin.write('stty size; echo "term=$TERM"\r');
    await io.waitOut('30 100\r\nterm=xterm-test\r\n');

    const resizeMark = spy.requests.length;
    Object.assign(io.stdout as TtyOut, { columns: 132, rows: 50 });
    io.stdout.emit('resize');
    await spy.next('job.resize', resizeMark);
    // Keys typed after a resize reach the guest after it.
    // mvirt-pty sets the size as it wakes after the resize's reply: on a
    // loaded machine a line typed at once may still see the old one.
    const sizes = () => (io.out().match(/\r\n\d+ \d+\r\n/g) ?? []).length;
    for (let i = 0; i < 20 && !io.out().includes('\r\n50 132\r\n'); i++) {
      const seen = sizes();
      io.stdin.write('stty size\r');
      await io.waitOut(() => sizes() > seen);
    }
    assert.match(io.out(), /\r\n50 132\r\n/);

    io.stdin.write('sleep 4711 && echo not-interrupted\r');
    await waitFor(() => sleeping().length > 0);
    io.stdin.write('\x03'); // Ctrl-C, as a raw terminal sends it
    io.stdin.write('echo status-$?\r');
    await io.waitOut('status-130\r\n');
    io.stdin.write('exit 3\r');
    const r = await done;
    assert.equal(r.code, 3, r.err);
    assert.doesNotMatch(r.out, /\r\nnot-interrupted\r\n/);
    assert.deepEqual(io.rawModes, [true, false]);
  });

  it('-t alone: a terminal, no stdin; its output merged on stdout', T, async () => {
    const io = terminal(90, 20);
    const r = await mvirt(
      ['exec', '-t', 'svc', '--', 'sh', '-c', 'stty size; echo e >&2; exit 4'],
      io,
    );
    assert.equal(r.code, 4, r.err);
    assert.equal(r.out, '20 90\r\ne\r\n');
    assert.deepEqual(io.rawModes, [], 'no raw mode without -i');
  });

  it('-i alone: piped stdin streamed, no terminal; plain exec: neither', T, async () => {
    const io = newIo({ stdin: 'twelve bytes' });
    const r = await mvirt(['exec', '-i', 'svc', '--', 'wc', '-c'], io);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.trim(), '12');
    const plain = await mvirt(['exec', 'svc', '--', 'sh', '-c', 'test -t 1 || echo no-tty']);
    assert.equal(plain.out, 'no-tty\n');
  });

  it('usage: the VM, the command after --, -it only on a terminal', T, async () => {
    for (const [argv, why] of [
      [['exec'], /missing VM/],
      [['exec', 'svc'], /put the command after --/],
      [['exec', 'svc', 'ls'], /put the command after --/],
      [['exec', 'svc', '--'], /missing CMD/],
      [['exec', '-it', 'svc', '--', 'sh'], /the input is not a terminal/],
    ] as const) {
      const r = await mvirt([...argv]);
      assert.equal(r.code, 2, `${argv.join(' ')}: ${r.err}`);
      assert.match(r.err, why);
    }
  });

  it('job.run and job.resize refuse what does not fit', T, async () => {
    const bad = await j.c.call('job.run', { vm: 'svc', argv: ['true'], cols: 80, rows: 24 });
    assert.equal(!bad.ok && bad.error.code, 'INVALID_PARAMS');
    const huge = await j.c.call('job.run', { vm: 'svc', argv: ['true'], tty: true, cols: 5000 });
    assert.equal(!huge.ok && huge.error.code, 'INVALID_PARAMS');

    const plain = result(await j.c.call('job.run', { vm: 'svc', argv: ['true'], wait: true }));
    const noTty = await j.c.call('job.resize', { jobId: plain.jobId, cols: 80, rows: 24 });
    assert.equal(!noTty.ok && noTty.error.code, 'INVALID_PARAMS');
    const zero = await j.c.call('job.resize', { jobId: plain.jobId, cols: 0, rows: 24 });
    assert.equal(!zero.ok && zero.error.code, 'INVALID_PARAMS');

    const done = result(
      await j.c.call('job.run', { vm: 'svc', argv: ['true'], tty: true, wait: true }),
    );
    assert.deepEqual(done.tty, { cols: 80, rows: 24 });
    const shown = await mvirt(['job', 'get', done.jobId]);
    assert.equal(shown.code, 0, shown.err);
    assert.match(shown.out, /^Terminal: +80 columns × 24 rows \(its size at the start\)$/m);
    assert.doesNotMatch((await mvirt(['job', 'get', plain.jobId])).out, /^Terminal:/m);
    const plan = result(
      await j.c.call('job.run', {
        vm: 'svc',
        argv: ['sh'],
        tty: true,
        cols: 100,
        rows: 30,
        stdinOpen: true,
        dryRun: true,
      }),
    ) as unknown as DryRunPlan;
    assert.ok(
      plan.steps.some((s) => /pseudo-terminal of 100 columns × 30 rows/.test(s)),
      plan.steps.join('; '),
    );
    assert.deepEqual(
      plan.commands.find((c) => c.kind === 'agent'),
      {
        kind: 'agent',
        type: 'exec',
        body: {
          jobId: '(assigned by job.run)',
          argv: ['sh'],
          stdinOpen: true,
          tty: { cols: 100, rows: 30 },
        },
      },
    );
    const ended = await j.c.call('job.resize', { jobId: done.jobId, cols: 90, rows: 30 });
    assert.equal(!ended.ok && ended.error.code, 'JOB_NOT_RUNNING');
  });
});

/** This test's `sleep 4711` (the fake guests' jobs are real processes here; an odd number, the machine is shared). */
function sleeping(): string[] {
  return readdirSync('/proc').filter((p) => {
    try {
      return /^\d+$/.test(p) && readFileSync(`/proc/${p}/cmdline`, 'utf8') === 'sleep\x004711\x00';
    } catch {
      return false;
    }
  });
}

/** Until `test` holds (no event says a guest command started; /proc is read every 20 ms). */
async function waitFor(test: () => boolean): Promise<void> {
  while (!test()) await new Promise((r) => setTimeout(r, 20));
}
