/**
 * `mvirt run` in-process (runCli with a memory Io) against the real mvirtd,
 * whose fake VMs run the real agent core: jobs are real processes (`sh -c …`),
 * their output, exit codes, signals, timeouts and cancels real. A test steers
 * a job with go-files (gated/open) and waits for events (what the CLI
 * printed, the requests the daemon got, what it published), never for time.
 * `jobs`, `job …`, `logs` and `pool …` are in jobs.test.ts; output
 * sequencing under streams a real daemon does not produce on demand is in
 * follow.test.ts.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { JOB_STDIN_CHUNK_BYTES } from '../../../protocol/rpc.js';
import type { RequestSpy } from '../../../harness/daemon.js';
import { cliJobsFixture, T } from '../../support/cli-jobs.js';
import { gated, open, result, TERMINAL, text, type JobDaemon } from '../../support/jobs.js';

describe('mvirt run against mvirtd', () => {
  const f = cliJobsFixture();
  let j: JobDaemon;
  let spy: RequestSpy;
  before(() => ({ j, spy } = f));
  const { newIo, mvirt, started, sent, count, goFile, jobTagged } = f;
  /** `mvirt run` of a shell script on svc, its arguments after `$0`. */
  const runScript = (script: string, ...args: string[]): string[] => [
    'run',
    '--vm',
    'svc',
    '--',
    'sh',
    '-c',
    script,
    'sh',
    ...args,
  ];

  it('streams stdout and stderr in order as they come and exits with the job code', T, async () => {
    const [go1, go2] = [goFile('stream-1'), goFile('stream-2')];
    const script =
      'printf "compiling\\n"; until [ -e "$1" ]; do sleep 0.01; done; printf "warning: x" >&2; ' +
      'until [ -e "$2" ]; do sleep 0.01; done; echo "tests: 1 failed"; exit 3';
    const argv = ['sh', '-c', script, 'sh', go1, go2];
    const { done, io, mark } = await started(['run', '--vm', 'svc', '--', ...argv]);
    await io.waitOut('compiling\n');
    await open(go1);
    // No line buffering: a partial line is printed at once (the job waits for go2).
    await io.waitErr('warning: x');
    await open(go2);
    const r = await done;
    assert.equal(r.code, 3, r.err);
    assert.equal(r.out, 'compiling\ntests: 1 failed\n');
    assert.equal(r.err, 'warning: x');
    assert.deepEqual(io.writes, [
      ['out', 'compiling\n'],
      ['err', 'warning: x'],
      ['out', 'tests: 1 failed\n'],
    ]);
    // The test's stdin is an (empty) pipe: streamed, as any pipe is.
    assert.deepEqual(sent('job.run', mark), {
      argv,
      vm: 'svc',
      encoding: 'bytes',
      stdinOpen: true,
    });
  });

  it('a job that writes at once and ends: all its output, once, in order', T, async () => {
    // What it writes before mvirt has subscribed comes from job.logs, the rest
    // live, some of it both ways: each line is printed once, in order.
    const script =
      'i=0; while [ $i -lt 100 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done';
    const r = await mvirt(['run', '--vm', 'svc', '--', 'sh', '-c', script]);
    assert.equal(r.code, 0, r.err);
    const lines = (p: string) => Array.from({ length: 100 }, (_, i) => `${p} ${i}\n`).join('');
    assert.equal(r.out, lines('out'));
    assert.equal(r.err, lines('err'));
  });

  it('maps how a job ended onto its exit code, with a note on stderr', T, async () => {
    const cases: [string[], number, RegExp | null][] = [
      [['--', 'true'], 0, null],
      [['--', 'sh', '-c', 'exit 42'], 42, null],
      [['--', 'sh', '-c', 'kill -TERM $$'], 143, /^mvirt: job-\w+ was killed by SIGTERM\n$/],
      [['--', 'sh', '-c', 'kill -KILL $$'], 137, /^mvirt: job-\w+ was killed by SIGKILL\n$/],
      [
        ['--timeout', '1', '--', 'sleep', '100'],
        124,
        /^mvirt: job-\w+ timed out after 1\.0 s and was killed\n$/,
      ],
      [
        ['--', '/nonexistent/mvirt-test-command'],
        126,
        /^mvirt: job-\w+ could not be started: the command could not be started: .*ENOENT/,
      ],
    ];
    for (const [args, code, note] of cases) {
      const r = await mvirt(['run', '--vm', 'svc', ...args]);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.err}`);
      if (note) assert.match(r.err, note);
      else assert.equal(r.err, '');
    }
  });

  it('a job whose VM dies under it is lost: 125 and the reason', T, async () => {
    const doomed = await j.serviceVm('doomed');
    const { done, io } = await started(['run', '--vm', 'doomed', '--', ...gated(goFile('never'))]);
    await io.waitOut('start\n');
    result(await j.c.call('vm.kill', { vm: 'doomed' }));
    const r = await done;
    assert.equal(r.code, 125, r.err);
    assert.match(r.err, /^mvirt: job-\w+ was lost: its VM doomed is (stopping|stopped)/m);
    assert.equal(r.out, 'start\n');
    result(await j.c.call('vm.delete', { vm: doomed.id }));
  });

  it('Ctrl-C cancels the job and keeps streaming until it has ended', T, async () => {
    // The job says something on its way out: mvirt prints it before leaving.
    const script = 'trap "echo bye; exit 0" TERM; echo started; while :; do sleep 0.01; done';
    const { done, jobId, io } = await started(['run', '--vm', 'svc', '--', 'sh', '-c', script]);
    await io.waitOut('started\n');
    const mark = spy.requests.length;
    io.signal('SIGINT');
    assert.deepEqual((await spy.next('job.cancel', mark)).params, { jobId });
    const r = await done;
    assert.equal(r.code, 130, r.err);
    assert.equal(r.out, 'started\nbye\n');
    assert.match(r.err, new RegExp(`^mvirt: cancelling ${jobId} \\(Ctrl-C again`, 'm'));
    assert.match(r.err, new RegExp(`^mvirt: ${jobId} was cancelled`, 'm'));
    assert.equal(result(await j.c.call('job.get', { jobId })).state, 'cancelled');
  });

  it('a second Ctrl-C leaves at once with 130 while the job still runs', T, async () => {
    const go = goFile('stubborn');
    // SIGTERM ignored: the cancel takes its time (the kill grace is a minute here).
    const script = 'trap "" TERM; echo started; until [ -e "$1" ]; do sleep 0.01; done';
    const { done, jobId, io } = await started(runScript(script, go));
    await io.waitOut('started\n');
    const mark = spy.requests.length;
    io.signal('SIGINT');
    await spy.next('job.cancel', mark);
    io.signal('SIGINT');
    const r = await done;
    assert.equal(r.code, 130);
    assert.equal(count('job.cancel', mark), 1, 'the cancel stands; no second one');
    assert.equal(result(await j.c.call('job.get', { jobId })).state, 'running');
    await open(go);
    assert.equal((await j.rec.job(jobId, TERMINAL)).state, 'cancelled');
  });

  it('Ctrl-C while the job is being submitted cancels it as soon as it exists', T, async () => {
    const mark = spy.requests.length;
    const io = newIo();
    const done = mvirt(['run', '--vm', 'svc', '--', 'sleep', '100'], io);
    await spy.next('job.run', mark);
    io.signal('SIGINT');
    const r = await done;
    assert.equal(r.code, 130, r.err);
    assert.match(r.err, /^mvirt: the job will be cancelled as soon as it exists$/m);
    const { jobId } = sent('job.cancel', mark) as { jobId: string };
    assert.match(r.err, new RegExp(`^mvirt: ${jobId} was cancelled`, 'm'));
    assert.equal((await j.rec.job(jobId, TERMINAL)).state, 'cancelled');
  });

  it('passes piped stdin to the job, and leaves a terminal stdin alone', T, async () => {
    const input = 'line 1\nline 2 é\n';
    let mark = spy.requests.length;
    let r = await mvirt(['run', '--vm', 'svc', '--', 'cat'], newIo({ stdin: input }));
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, input);
    assert.equal((sent('job.run', mark) as { stdinOpen?: boolean }).stdinOpen, true);
    assert.deepEqual(sent('job.stdin', mark), {
      jobId: (sent('job.logs', mark) as { jobId: string }).jobId,
      data: Buffer.from(input).toString('base64'),
      eof: true,
    });

    const catThenEnd = ['run', '--vm', 'svc', '--', 'sh', '-c', 'cat; echo end'];
    mark = spy.requests.length;
    r = await mvirt(catThenEnd, newIo({ tty: true }));
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'end\n', 'the job got no stdin: cat ended at once');
    assert.equal((sent('job.run', mark) as { stdin?: string }).stdin, undefined);

    // --no-stdin does not wait for a pipe that never ends.
    mark = spy.requests.length;
    r = await mvirt(['run', '-n', ...catThenEnd.slice(1)], newIo({ stdin: null }));
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'end\n');
    assert.equal((sent('job.run', mark) as { stdinOpen?: boolean }).stdinOpen, undefined);
  });

  it('streams binary stdin of any size, chunk by chunk, byte for byte', T, async () => {
    const data = randomBytes(3 * JOB_STDIN_CHUNK_BYTES + 1000);
    const mark = spy.requests.length;
    const io = newIo({ stdin: null });
    io.stdin.end(data);
    const r = await mvirt(['run', '--vm', 'svc', '--', 'sha256sum'], io);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.split(' ')[0], createHash('sha256').update(data).digest('hex'));
    const calls = spy.requests.slice(mark).filter((q) => q.method === 'job.stdin');
    assert.equal(calls.length, 4);
    assert.deepEqual(
      calls.map((q) => (q.params as { eof?: boolean }).eof),
      [false, false, false, true],
    );
  });

  it(
    '--detach sends piped input in full before it leaves; an empty pipe gives none',
    T,
    async () => {
      const data = randomBytes(JOB_STDIN_CHUNK_BYTES + 5);
      const io = newIo({ stdin: null });
      io.stdin.end(data);
      let mark = spy.requests.length;
      let r = await mvirt(['run', '-d', '--vm', 'svc', '--', 'sha256sum'], io);
      assert.equal(r.code, 0, r.err);
      const jobId = r.out.trim();
      assert.equal(count('job.stdin', mark), 2);
      await j.rec.job(jobId, TERMINAL);
      assert.equal(
        text(j.rec.outputs(jobId)).split(' ')[0],
        createHash('sha256').update(data).digest('hex'),
      );

      mark = spy.requests.length;
      r = await mvirt(['run', '-d', '--vm', 'svc', '--', 'true']);
      assert.equal(r.code, 0, r.err);
      assert.equal((sent('job.run', mark) as { stdinOpen?: boolean }).stdinOpen, undefined);
      assert.equal(count('job.stdin', mark), 0);
    },
  );

  it('writes the bytes the job wrote, unchanged (not UTF-8 too)', T, async () => {
    // Every byte value, twice, in a file the job cats (the fake VMs' jobs run on this host).
    const [file, go] = [goFile('all-bytes'), goFile('all-bytes-go')];
    const all = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i))]);
    const data = Buffer.concat([all, randomBytes(300_000), all]);
    await writeFile(file, data);
    // This daemon keeps RETAIN (4 KiB) of a job's output: the bytes must come
    // live, so the job cats only once mvirt follows it (job.logs is asked after
    // the subscription stands). A job that won that race once lost its first
    // 128 KiB chunk to retention (CI, 2026-12-06).
    const script = 'until [ -e "$1" ]; do sleep 0.01; done; cat "$2"';
    const { done, io } = await started(runScript(script, go, file));
    await open(go);
    const r = await done;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, '', 'no output lost to retention');
    const out = io.outBytes();
    const at = [...data].findIndex((b, i) => out[i] !== b);
    assert.ok(
      out.equals(data),
      `byte-identical: ${out.length} of ${data.length} bytes, first difference at ${at}; stderr: ${r.err}`,
    );
  });

  it('a job that ends without reading a stdin that never ends: mvirt ends with it', T, async () => {
    const io = newIo({ stdin: null });
    io.stdin.write('some input that nobody reads\n'); // and the pipe stays open
    const r = await mvirt(['run', '--vm', 'svc', '--', 'sh', '-c', 'echo done; exit 4'], io);
    assert.equal(r.code, 4, r.err);
    assert.equal(r.out, 'done\n');
  });

  it('sends the target, env, cwd, timeout and size; --detach prints the id', T, async () => {
    const mark = spy.requests.length;
    const argv = ['sh', '-c', 'echo "$A $B"; pwd'];
    const r = await mvirt([
      'run',
      '--image',
      'default',
      '--env',
      'A=1',
      '--env',
      'B=x=y',
      '--cwd',
      '/tmp',
      '--timeout',
      '20.5',
      '--vcpus',
      '2',
      '--memory',
      '128',
      '-d',
      '--',
      ...argv,
    ]);
    assert.equal(r.code, 0, r.err);
    const jobId = r.out.trim();
    assert.match(r.out, /^job-[0-9a-f]+\n$/);
    assert.deepEqual(sent('job.run', mark), {
      argv,
      image: 'default',
      env: { A: '1', B: 'x=y' },
      cwd: '/tmp',
      timeoutMs: 20_500,
      vcpus: 2,
      memoryMiB: 128,
      encoding: 'bytes',
    });
    assert.equal(count('job.logs', mark), 0, '--detach does not follow');
    assert.equal(count('job.stdin', mark), 0, 'an empty stdin pipe: no input');
    // It ran in an ephemeral VM of that size, with that env and cwd.
    const done = await j.rec.job(jobId, TERMINAL);
    assert.equal(done.state, 'succeeded', done.reason);
    assert.equal(text(j.rec.outputs(jobId)), '1 x=y\n/tmp\n');
    const vm = j.rec.vmStates(done.vm!).find((v) => v !== null)!;
    assert.deepEqual([vm.kind, vm.vcpus, vm.memoryMiB], ['ephemeral', 2, 128]);
  });

  it('says what is wrong with a target the daemon does not know', T, async () => {
    for (const [args, re] of [
      [['--vm', 'no-such-vm'], /VM_NOT_FOUND[\s\S]*hint: `mvirt vm ls` lists the VMs/],
      [['--pool', 'no-such-pool'], /POOL_NOT_FOUND[\s\S]*hint: `mvirt pool ls` lists the pools/],
      [['--image', 'no-such-image'], /IMAGE_NOT_FOUND[\s\S]*hint: build it: `mvirt image build`/],
    ] as const) {
      const r = await mvirt(['run', ...args, '--', 'true']);
      assert.equal(r.code, 1, r.err);
      assert.match(r.err, re);
      assert.equal(r.out, '');
    }
  });

  it('shows the queue position once on a terminal stderr', T, async () => {
    // A pool of one VM, held by a job: the next two jobs queue, #1 and #2.
    result(await j.c.call('pool.set', { name: 'q', min: 0, max: 1 }));
    const go = goFile('queue-holder');
    const holder = await j.run({ pool: 'q', argv: gated(go) });
    await j.rec.job(holder.jobId, ['running']);
    const first = mvirt(['run', '--pool', 'q', '--', 'echo', 'q1'], newIo({ errTty: false }));
    await jobTagged('q1', 'queued');
    const io = newIo({ errTty: true });
    const second = mvirt(['run', '--pool', 'q', '--', 'echo', 'q2'], io);
    await io.waitErr('is queued (position 2)');
    await open(go);
    const [r1, r2] = await Promise.all([first, second]);
    assert.equal(r1.code, 0, r1.err);
    assert.equal(r1.out, 'q1\n');
    assert.equal(r1.err, '', 'not a terminal: nothing about the queue');
    assert.equal(r2.code, 0, r2.err);
    assert.equal(r2.out, 'q2\n');
    // It became #1 when the first left the queue, and that is not shown again.
    const q2 = await jobTagged('q2', 'succeeded');
    assert.ok(
      j.rec.jobStates(q2.jobId).some((s) => s.state === 'queued' && s.queuePosition === 1),
      'it moved up to #1',
    );
    assert.equal(r2.err, `mvirt: ${q2.jobId} is queued (position 2)\n`);
    result(await j.c.call('pool.delete', { name: 'q' }));
  });
});
