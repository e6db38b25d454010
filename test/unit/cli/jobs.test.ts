/**
 * `mvirt run`, `jobs`, `job …`, `logs` and `pool …` in-process against a real
 * aedes broker and the fake daemon (test/helpers/cli-fake-daemon.ts). The
 * fake stands in for the job manager: a test scripts a job's output and state
 * changes, and waits for the CLI's requests (not for time) to know where the
 * CLI is: once it asked job.logs, it has subscribed to the job's topics.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runCli, type ClientFactory } from '../../../host/cli/run.js';
import { MAX_STDIN_BYTES } from '../../../host/cli/jobs.js';
import { jobExit, shellLine } from '../../../host/cli/job-view.js';
import type { JobRecord, OutputChunk } from '../../../protocol/rpc.js';
import {
  startFakeDaemon,
  startTestBroker,
  type FakeDaemon,
  type TestBroker,
} from '../../support/cli-fake-daemon.js';
import { memoryIo, type MemoryIo } from '../../support/cli-io.js';

/** A regression must fail, not hang: every wait in these tests is for an event, bounded here. */
const T = { timeout: 30_000 };

describe('mvirt run, jobs, logs and pool against a fake daemon', () => {
  let broker: TestBroker;
  let fake: FakeDaemon;
  before(async () => {
    broker = await startTestBroker();
    fake = await startFakeDaemon(broker.url);
  });
  after(async () => {
    await fake.close();
    await broker.close();
  });
  afterEach(() => {
    fake.onJobRun = undefined;
    fake.onJobCancel = undefined;
    fake.logsPageChunks = Infinity;
  });

  /** A fresh io whose stdin is an empty pipe (already at its end) unless told otherwise. */
  const newIo = (o: { tty?: boolean; errTty?: boolean; stdin?: string | null } = {}): MemoryIo => {
    const io = memoryIo({ env: { MVIRT_BROKER: broker.url }, ...o });
    if (!o.tty && o.stdin !== null) io.stdin.end(o.stdin ?? '');
    return io;
  };

  async function mvirt(argv: string[], io: MemoryIo = newIo()) {
    const code = await runCli(argv, io);
    return { code, out: io.out(), err: io.errText(), io };
  }

  /** Start `mvirt run …` and resolve once it has subscribed to the job (its first job.logs). */
  async function started(argv: string[], io: MemoryIo = newIo()) {
    const mark = fake.requests.length;
    const done = mvirt(argv, io);
    const logs = await fake.waitRequest('job.logs', mark);
    const jobId = (logs.params as { jobId: string }).jobId;
    return { done, jobId, io, mark };
  }

  const lastJob = (): JobRecord => [...fake.jobs.values()].at(-1)!;

  it('streams stdout and stderr in order as they come and exits with the job code', T, async () => {
    const { done, jobId, io, mark } = await started(['run', '--', 'sh', '-c', 'make test']);
    await fake.setJob(jobId, { state: 'running', startedAt: new Date().toISOString() });
    await fake.addOutput(jobId, 'stdout', 'compiling\n');
    // No line buffering: a partial line is printed at once.
    await io.waitOut('compiling\n');
    await fake.addOutput(jobId, 'stderr', 'warning: x');
    await io.waitErr('warning: x');
    await fake.addOutput(jobId, 'stdout', 'tests: 1 failed\n');
    await fake.setJob(jobId, { state: 'failed', exitCode: 3 });
    const r = await done;
    assert.equal(r.code, 3, r.err);
    assert.equal(r.out, 'compiling\ntests: 1 failed\n');
    assert.equal(r.err, 'warning: x');
    assert.deepEqual(io.writes, [
      ['out', 'compiling\n'],
      ['err', 'warning: x'],
      ['out', 'tests: 1 failed\n'],
    ]);
    const run = fake.requests.slice(mark).find((q) => q.method === 'job.run');
    assert.deepEqual(run?.params, { argv: ['sh', '-c', 'make test'] });
  });

  it('prints out-of-order and duplicate live chunks once, in order', T, async () => {
    const { done, jobId, io, mark } = await started(['run', '--', 'count']);
    await fake.setJob(jobId, { state: 'running' });
    const c = (seq: number, data: string): OutputChunk => ({ seq, stream: 'stdout', data });
    // Live only (never stored): only the live path can deliver these.
    for (const ch of [c(2, 'three '), c(0, 'one '), c(0, 'one '), c(3, 'four'), c(1, 'two ')])
      await fake.publishOutput(jobId, ch);
    await fake.publishOutput(jobId, c(2, 'three '));
    await io.waitOut('one two three four');
    await fake.setJob(jobId, { state: 'succeeded', exitCode: 0, nextSeq: 4 });
    const r = await done;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'one two three four');
    assert.equal(r.err, '');
    const logs = fake.requests.slice(mark).filter((q) => q.method === 'job.logs');
    assert.equal(logs.length, 1, 'no gap to fill: one job.logs for the catch-up only');
  });

  it('recovers output published before it subscribed through job.logs', T, async () => {
    fake.onJobRun = async (job) => {
      await fake.setJob(job.jobId, { state: 'running' });
      // Published live before the reply: nobody can have subscribed yet.
      await fake.addOutput(job.jobId, 'stdout', 'early\n');
      await fake.addOutput(job.jobId, 'stderr', 'early err\n');
    };
    const { done, jobId, mark, io } = await started(['run', '--', 'x']);
    const first = fake.requests.slice(mark).find((q) => q.method === 'job.logs');
    assert.deepEqual(first?.params, { jobId, fromSeq: 0 });
    await fake.addOutput(jobId, 'stdout', 'late\n');
    // Caught up while the job runs, not only once it has ended.
    await io.waitOut('early\nlate\n');
    await fake.setJob(jobId, { state: 'succeeded', exitCode: 0 });
    const r = await done;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'early\nlate\n');
    assert.equal(r.err, 'early err\n');
  });

  it('prints a job that ended before it subscribed, entirely from job.logs', T, async () => {
    fake.onJobRun = async (job) => {
      await fake.addOutput(job.jobId, 'stdout', 'all done\n');
      await fake.setJob(job.jobId, { state: 'succeeded', exitCode: 0 });
    };
    const r = await mvirt(['run', '--', 'true']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'all done\n');
  });

  it('fills a gap that is still open when the job ends with job.logs', T, async () => {
    const { done, jobId, mark } = await started(['run', '--', 'x']);
    await fake.addOutput(jobId, 'stdout', 'a');
    await fake.addOutput(jobId, 'stdout', 'b', { live: false }); // lost live
    await fake.addOutput(jobId, 'stdout', 'c');
    await fake.setJob(jobId, { state: 'succeeded', exitCode: 0 });
    const r = await done;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'abc');
    const fill = fake.requests
      .slice(mark)
      .filter((q) => q.method === 'job.logs')
      .map((q) => (q.params as { fromSeq: number }).fromSeq);
    assert.deepEqual(fill, [0, 1]);
  });

  it('maps how a job ended onto its exit code, with a note on stderr', T, async () => {
    const cases: [Partial<JobRecord>, number, RegExp | null][] = [
      [{ state: 'succeeded', exitCode: 0 }, 0, null],
      [{ state: 'failed', exitCode: 42 }, 42, null],
      [
        { state: 'failed', signal: 'SIGKILL', oomKilled: true },
        137,
        /killed by SIGKILL \(out of memory/,
      ],
      [{ state: 'failed', signal: 'SIGTERM' }, 143, /killed by SIGTERM/],
      [{ state: 'timed_out', signal: 'SIGKILL', timeoutMs: 5000 }, 124, /timed out after 5\.0 s/],
      [{ state: 'cancelled', signal: 'SIGTERM' }, 130, /was cancelled/],
      [{ state: 'lost', reason: 'the VM stopped under the job' }, 125, /lost: the VM stopped/],
      [{ state: 'failed', reason: 'spawn nope ENOENT' }, 126, /could not be started: spawn/],
    ];
    for (const [end, code, note] of cases) {
      fake.onJobRun = async (job) => void (await fake.setJob(job.jobId, end));
      const r = await mvirt(['run', '--', 'x']);
      assert.equal(r.code, code, `${JSON.stringify(end)}: ${r.err}`);
      if (note) assert.match(r.err, note);
      else assert.equal(r.err, '');
    }
  });

  it('Ctrl-C cancels the job and keeps streaming until it has ended', T, async () => {
    const { done, jobId, io } = await started(['run', '--', 'sleep', '100']);
    await fake.setJob(jobId, { state: 'running' });
    const mark = fake.requests.length;
    fake.onJobCancel = async (job) => {
      // The job still says something on its way out.
      await fake.addOutput(job.jobId, 'stdout', 'bye\n');
      await fake.setJob(job.jobId, { state: 'cancelled', signal: 'SIGTERM' });
    };
    io.signal('SIGINT');
    const cancel = await fake.waitRequest('job.cancel', mark);
    assert.deepEqual(cancel.params, { jobId });
    const r = await done;
    assert.equal(r.code, 130, r.err);
    assert.equal(r.out, 'bye\n');
    assert.match(r.err, new RegExp(`cancelling ${jobId}`));
  });

  it('a second Ctrl-C leaves at once with 130 while the job still runs', T, async () => {
    const { done, jobId, io } = await started(['run', '--', 'sleep', '100']);
    await fake.setJob(jobId, { state: 'running' });
    fake.onJobCancel = () => {}; // a cancel that takes its time
    const mark = fake.requests.length;
    io.signal('SIGINT');
    await fake.waitRequest('job.cancel', mark);
    io.signal('SIGINT');
    const r = await done;
    assert.equal(r.code, 130);
    assert.equal(fake.jobs.get(jobId)?.state, 'running');
    assert.equal(fake.requests.slice(mark).filter((q) => q.method === 'job.cancel').length, 1);
  });

  it('passes piped stdin to the job, and leaves a terminal stdin alone', T, async () => {
    fake.onJobRun = async (job) => void (await fake.setJob(job.jobId, { state: 'succeeded' }));
    let mark = fake.requests.length;
    let r = await mvirt(['run', '--', 'wc', '-l'], newIo({ stdin: 'line 1\nline 2 é\n' }));
    assert.equal(r.code, 0, r.err);
    let run = fake.requests.slice(mark).find((q) => q.method === 'job.run');
    assert.equal((run?.params as { stdin?: string }).stdin, 'line 1\nline 2 é\n');

    mark = fake.requests.length;
    r = await mvirt(['run', '--', 'true'], newIo({ tty: true }));
    assert.equal(r.code, 0, r.err);
    run = fake.requests.slice(mark).find((q) => q.method === 'job.run');
    assert.equal((run?.params as { stdin?: string }).stdin, undefined);

    // --no-stdin does not wait for a pipe that never ends.
    mark = fake.requests.length;
    r = await mvirt(['run', '-n', '--', 'true'], newIo({ stdin: null }));
    assert.equal(r.code, 0, r.err);
    run = fake.requests.slice(mark).find((q) => q.method === 'job.run');
    assert.equal((run?.params as { stdin?: string }).stdin, undefined);
  });

  it(
    'refuses stdin beyond the protocol cap or not UTF-8 before submitting anything',
    T,
    async () => {
      const mark = fake.requests.length;
      const io = newIo({ stdin: null });
      io.stdin.write(Buffer.alloc(MAX_STDIN_BYTES, 'a'));
      io.stdin.end('b');
      let r = await mvirt(['run', '--', 'cat'], io);
      assert.equal(r.code, 2);
      assert.match(r.err, /stdin is larger than [^,]+, the most a job takes[\s\S]*--no-stdin/);

      const bin = newIo({ stdin: null });
      bin.stdin.end(Buffer.from([0x66, 0xff, 0xfe]));
      r = await mvirt(['run', '--', 'cat'], bin);
      assert.equal(r.code, 2);
      assert.match(r.err, /stdin is not UTF-8 text/);
      assert.equal(fake.requests.length, mark, 'nothing was sent');
    },
  );

  it('sends the target, env, cwd, timeout and size; --detach prints the id', T, async () => {
    const mark = fake.requests.length;
    const r = await mvirt([
      'run',
      '--image',
      'default',
      '--env',
      'A=1',
      '--env',
      'B=x=y',
      '--cwd',
      '/work',
      '--timeout',
      '2.5',
      '--vcpus',
      '2',
      '--memory',
      '512',
      '-d',
      '--',
      'make',
      '-j2',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${lastJob().jobId}\n`);
    const run = fake.requests.slice(mark).find((q) => q.method === 'job.run');
    assert.deepEqual(run?.params, {
      argv: ['make', '-j2'],
      image: 'default',
      env: { A: '1', B: 'x=y' },
      cwd: '/work',
      timeoutMs: 2500,
      vcpus: 2,
      memoryMiB: 512,
    });
    assert.equal(
      fake.requests.slice(mark).some((q) => q.method === 'job.logs'),
      false,
      '--detach does not follow',
    );
    const j = await mvirt(['run', '--pool', 'p1', '--detach', '--json', '--', 'true']);
    assert.deepEqual(JSON.parse(j.out).target, { kind: 'pool', pool: 'p1' });
  });

  it('shows the queue position once on a terminal stderr', T, async () => {
    fake.onJobRun = async (job) =>
      void (await fake.setJob(job.jobId, { state: 'queued', queuePosition: 2 }));
    for (const tty of [true, false]) {
      const { done, jobId } = await started(['run', '--', 'x'], newIo({ errTty: tty }));
      await fake.setJob(jobId, { queuePosition: 1 });
      await fake.setJob(jobId, { state: 'running' });
      await fake.setJob(jobId, { state: 'succeeded', exitCode: 0 });
      const r = await done;
      assert.equal(r.code, 0, r.err);
      assert.equal(r.err, tty ? `mvirt: ${jobId} is queued (position 2)\n` : '');
    }
  });

  it('jobs lists jobs as a table, newest first, or as JSON', T, async () => {
    const t0 = Date.now() - 600_000;
    for (const [i, state, exitCode, signal] of [
      [1, 'succeeded', 0, null],
      [2, 'failed', null, 'SIGKILL'],
      [3, 'running', null, null],
    ] as const) {
      fake.onJobRun = async (job) =>
        void (await fake.setJob(job.jobId, {
          vm: 'vm-table',
          state,
          exitCode,
          signal,
          createdAt: new Date(t0 + i * 1000).toISOString(),
          startedAt: new Date(t0 + i * 1000).toISOString(),
          finishedAt: state === 'running' ? null : new Date(t0 + i * 1000 + 2500).toISOString(),
        }));
      await mvirt(['run', '-d', '--vm', 'vm-table', '--', 'echo', `job ${i}`]);
    }
    const mark = fake.requests.length;
    const io = memoryIo({ env: { MVIRT_BROKER: broker.url }, now: t0 + 600_000 });
    const r = await mvirt(['jobs', '--vm', 'vm-table'], io);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    assert.match(lines[0]!, /^ID +STATE +VM +EXIT +STARTED +DURATION +COMMAND$/);
    assert.match(lines[1]!, /^job-\w+ +running +vm-table +- +9m ago +9m57s +echo 'job 3'$/);
    assert.match(lines[2]!, /^job-\w+ +failed +vm-table +SIGKILL +9m ago +2\.5 s +echo 'job 2'$/);
    assert.match(lines[3]!, /^job-\w+ +succeeded +vm-table +0 +9m ago +2\.5 s +echo 'job 1'$/);
    assert.equal(lines.length, 4);
    assert.deepEqual(fake.requests[mark]?.params, { vm: 'vm-table' });

    const j = await mvirt([
      'jobs',
      '--vm',
      'vm-table',
      '--state',
      'failed',
      '--limit',
      '5',
      '--json',
    ]);
    const parsed = JSON.parse(j.out) as { jobs: JobRecord[] };
    assert.deepEqual(
      parsed.jobs.map((x) => x.signal),
      ['SIGKILL'],
    );
    assert.deepEqual(fake.requests.at(-1)?.params, { vm: 'vm-table', state: 'failed', limit: 5 });

    const none = await mvirt(['job', 'ls', '--vm', 'vm-nothing']);
    assert.equal(none.out, 'no jobs match\n');
  });

  it('job get shows a job, job cancel cancels one, unknown jobs say what to do', T, async () => {
    fake.onJobRun = async (job) =>
      void (await fake.setJob(job.jobId, { state: 'running', vm: 'vm-g' }));
    const d = await mvirt(['run', '-d', '--cwd', '/tmp', '--', 'sleep', '9']);
    const jobId = d.out.trim();
    let r = await mvirt(['job', 'get', jobId]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^State: +running$/m);
    assert.match(r.out, /^Command: +sleep 9$/m);
    assert.match(r.out, /^Target: +image default$/m);
    assert.match(r.out, /^Cwd: +\/tmp$/m);

    r = await mvirt(['job', 'cancel', jobId]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${jobId} is cancelled\n`);

    r = await mvirt(['job', 'get', 'job-ffffffffffff']);
    assert.equal(r.code, 1);
    assert.match(r.err, /JOB_NOT_FOUND[\s\S]*hint: `mvirt jobs` lists the jobs/);
  });

  it(
    'logs pages through stored output (more/nextSeq) and notes dropped chunks once',
    T,
    async () => {
      fake.onJobRun = async (job) => {
        for (let i = 0; i < 7; i++)
          await fake.addOutput(job.jobId, i % 3 === 2 ? 'stderr' : 'stdout', `${i}\n`);
        await fake.setJob(job.jobId, { state: 'succeeded', exitCode: 0 });
      };
      const jobId = (await mvirt(['run', '-d', '--', 'x'])).out.trim();
      fake.logsPageChunks = 2;
      let mark = fake.requests.length;
      let r = await mvirt(['logs', jobId]);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out, '0\n1\n3\n4\n6\n');
      assert.equal(r.err, '2\n5\n');
      const pages = (from: number) =>
        fake.requests
          .slice(from)
          .filter((q) => q.method === 'job.logs')
          .map((q) => (q.params as { fromSeq: number }).fromSeq);
      assert.deepEqual(pages(mark), [0, 2, 4, 6]);

      fake.dropOutput(jobId, 3);
      mark = fake.requests.length;
      r = await mvirt(['logs', jobId]);
      assert.equal(r.out, '3\n4\n6\n');
      const notes = r.err.split('\n').filter((l) => l.startsWith('mvirt:'));
      assert.equal(notes.length, 1, r.err);
      assert.match(notes[0]!, /3 output chunks .* dropped by the daemon's output retention/);
      assert.equal(r.err.replace(/^mvirt:.*\n/m, ''), '5\n');
      assert.deepEqual(pages(mark), [0, 5]);

      const j = await mvirt(['logs', jobId, '--json']);
      assert.deepEqual(JSON.parse(j.out.split('\n')[0]!), {
        seq: 3,
        stream: 'stdout',
        data: '3\n',
      });
    },
  );

  it('logs -f prints what is stored, then follows until the job has ended', T, async () => {
    fake.onJobRun = async (job) => {
      await fake.setJob(job.jobId, { state: 'running' });
      await fake.addOutput(job.jobId, 'stdout', 'before\n');
    };
    const jobId = (await mvirt(['run', '-d', '--', 'x'])).out.trim();
    const io = newIo();
    const mark = fake.requests.length;
    const following = mvirt(['logs', '-f', jobId], io);
    await fake.waitRequest('job.logs', mark);
    await io.waitOut('before\n');
    await fake.addOutput(jobId, 'stdout', 'after\n');
    await fake.addOutput(jobId, 'stderr', 'oops\n');
    await fake.setJob(jobId, { state: 'failed', exitCode: 1 });
    const r = await following;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'before\nafter\n');
    assert.equal(r.err, 'oops\n');
  });

  it('logs -f stops at Ctrl-C and leaves the job alone', T, async () => {
    fake.onJobRun = async (job) => void (await fake.setJob(job.jobId, { state: 'running' }));
    const jobId = (await mvirt(['run', '-d', '--', 'x'])).out.trim();
    const io = newIo();
    const mark = fake.requests.length;
    const following = mvirt(['logs', '-f', jobId], io);
    await fake.waitRequest('job.logs', mark);
    io.signal('SIGINT');
    const r = await following;
    assert.equal(r.code, 0, r.err);
    assert.equal(
      fake.requests.slice(mark).some((q) => q.method === 'job.cancel'),
      false,
    );
    assert.equal(fake.jobs.get(jobId)?.state, 'running');
  });

  it('pool set, ls, get and rm', T, async () => {
    let r = await mvirt(['pool', 'set', 'builders', '--min', '2', '--max', '4', '--vcpus', '2']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(fake.requests.at(-1)?.params, { name: 'builders', min: 2, max: 4, vcpus: 2 });
    assert.equal(
      r.out,
      'pool builders: 2–4 VMs of default (2 vCPU, 256 MiB); now 0 ready, 2 starting, 0 busy\n',
    );
    await mvirt(['pool', 'set', 'alpha', '--min', '0', '--image', 'tiny']);

    r = await mvirt(['pool', 'ls']);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    assert.match(lines[0]!, /^NAME +IMAGE +MIN +MAX +VCPUS +MEMORY +READY +STARTING +BUSY$/);
    assert.match(lines[1]!, /^alpha +tiny +0 +0 +1 +256 MiB +0 +0 +0$/);
    assert.match(lines[2]!, /^builders +default +2 +4 +2 +256 MiB +0 +2 +0$/);

    r = await mvirt(['pool', 'ls', '--json']);
    assert.deepEqual(
      (JSON.parse(r.out) as { pools: { name: string }[] }).pools.map((p) => p.name).sort(),
      ['alpha', 'builders'],
    );

    r = await mvirt(['pool', 'get', 'builders']);
    assert.match(r.out, /^Max: +4$/m);
    assert.match(r.out, /^VMs: +0 ready, 2 starting, 0 busy$/m);

    r = await mvirt(['pool', 'rm', 'builders']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'deleted pool builders\n');
    r = await mvirt(['pool', 'get', 'builders']);
    assert.equal(r.code, 1);
    assert.match(r.err, /POOL_NOT_FOUND[\s\S]*hint: `mvirt pool ls` lists the pools/);
    await mvirt(['pool', 'rm', 'alpha']);
    r = await mvirt(['pool', 'ls']);
    assert.match(r.out, /^no pools yet/);
  });
});

describe('mvirt run, job, logs and pool usage errors: exit 2, nothing sent', () => {
  const noNetwork: ClientFactory = () => assert.fail('usage errors must not connect');
  const cases: [string[], RegExp][] = [
    [['run'], /missing -- CMD[\s\S]*mvirt run --help/],
    [['run', 'ls'], /put the command after --: mvirt run \[options\] -- ls/],
    [['run', '--'], /missing CMD after --/],
    [
      ['run', 'ls', '-l'],
      /unknown option -l \(the command goes after --: mvirt run \[options\] --/,
    ],
    [['run', '--image', 'a', '--vm', 'b', '--', 'ls'], /at most one of --image, --vm and --pool/],
    [['run', '--vm', 'a', '--pool', 'b', '--', 'ls'], /at most one of/],
    [['run', '--env', '1X=2', '--', 'ls'], /--env wants NAME=VALUE/],
    [['run', '--env', 'NOVALUE', '--', 'ls'], /--env wants NAME=VALUE.*'NOVALUE'/],
    [['run', '--timeout', 'soon', '--', 'ls'], /--timeout wants seconds, got 'soon'/],
    [['run', '--vcpus', 'many', '--', 'ls'], /--vcpus wants a whole number/],
    [
      ['run', '--vm', 'v', '--memory', '512', '--', 'ls'],
      /--vcpus and --memory size the ephemeral/,
    ],
    [['jobs', '--state', 'napping'], /--state must be one of queued, running/],
    [['jobs', '--limit', 'all'], /--limit wants a whole number/],
    [['job', 'get'], /missing JOB/],
    [['job', 'get', 'x/#'], /'x\/#' is not a job id/],
    [['job', 'nope'], /no command 'job nope'; see 'mvirt job --help'/],
    [['logs', 'web-1'], /'web-1' is not a job id/],
    [['pool', 'set', 'p'], /missing --min N/],
    [['pool', 'set', 'p', '--min', 'x'], /--min wants a whole number/],
    [['pool', 'set', 'p', '--min', '3', '--max', '2'], /--max \(2\) must be at least --min \(3\)/],
    [['pool', 'rm'], /missing NAME/],
  ];
  for (const [argv, re] of cases) {
    it(`mvirt ${argv.join(' ')}`, async () => {
      const io = memoryIo();
      const code = await runCli(argv, io, noNetwork);
      assert.equal(code, 2, io.errText());
      assert.match(io.errText(), re);
      assert.equal(io.out(), '');
    });
  }

  it('mvirt job and mvirt pool alone list their commands', T, async () => {
    for (const [group, re] of [
      ['job', /job ls[\s\S]*job get[\s\S]*job cancel/],
      ['pool', /pool set[\s\S]*pool ls[\s\S]*pool get[\s\S]*pool rm/],
    ] as const) {
      const io = memoryIo();
      assert.equal(await runCli([group], io, noNetwork), 2);
      assert.match(io.errText(), re);
    }
  });

  it('run --help shows the usage line, its own --timeout and the exit codes', T, async () => {
    const io = memoryIo();
    assert.equal(await runCli(['run', '--help'], io, noNetwork), 0);
    const out = io.out();
    assert.match(out, /^Usage: mvirt run \[options\] -- CMD \[ARG\.\.\.\]$/m);
    assert.match(out, /--timeout S +kill the job after S seconds/);
    assert.doesNotMatch(out, /seconds to wait for a reply/);
    for (const code of ['124', '125', '126', '128\\+N', '130'])
      assert.match(out, new RegExp(`^ +${code} +\\S`, 'm'));
    const main = memoryIo();
    await runCli(['--help'], main, noNetwork);
    assert.match(main.out(), /run +Run a command in a microVM/);
    assert.match(main.out(), /124 timed out, 125 lost/);
  });
});

describe('job exit codes and command lines, without a broker', () => {
  it('maps signals by name and quotes command lines', () => {
    const rec = (o: Partial<JobRecord>) =>
      ({ jobId: 'job-1', reason: undefined, ...o }) as JobRecord;
    assert.equal(jobExit(rec({ state: 'failed', exitCode: null, signal: 'SIGHUP' })).code, 129);
    assert.equal(jobExit(rec({ state: 'failed', exitCode: null, signal: 'SIGSEGV' })).code, 139);
    assert.equal(jobExit(rec({ state: 'succeeded', exitCode: 0, signal: null })).code, 0);
    assert.equal(shellLine(['sh', '-c', "echo 'hi there'"]), `sh -c 'echo '\\''hi there'\\'''`);
  });
});
