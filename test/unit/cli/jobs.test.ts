/**
 * `mvirt run`, `jobs`, `job …`, `logs` and `pool …` in-process (runCli with a
 * memory Io) against the real mvirtd, whose fake VMs run the real agent core:
 * jobs are real processes (`sh -c …`), their output, exit codes, signals,
 * timeouts and cancels real. A test steers a job with go-files (gated/open)
 * and waits for events (what the CLI printed, the requests the daemon got,
 * what it published), never for time. Output sequencing under streams a real
 * daemon does not produce on demand (out of order, duplicates, gaps, pages)
 * is tested against an in-memory seam in follow.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { runCli, type ClientFactory } from '../../../host/cli/run.js';
import { MAX_STDIN_BYTES } from '../../../host/cli/jobs.js';
import { jobExit, shellLine } from '../../../host/cli/job-view.js';
import type { JobRecord, OutputChunk, VmRecord } from '../../../protocol/rpc.js';
import { TEST_AGENT_OPTIONS } from '../../../harness/agent-options.js';
import { cliEnv } from '../../../harness/connect.js';
import { spyRequests, writeFakeImage, type RequestSpy } from '../../../harness/daemon.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import { memoryIo, type MemoryIo } from '../../support/cli-io.js';
import {
  cleanupAll,
  gated,
  open,
  result,
  startJobDaemon,
  TERMINAL,
  text,
  type JobDaemon,
} from '../../support/jobs.js';

/** A regression must fail, not hang: every wait in these tests is for an event, bounded here. */
const T = { timeout: 30_000 };
/** Stored output per job: small, so that retention drops some (the logs test). */
const RETAIN = 4096;

describe('mvirt run, jobs, logs and pool against mvirtd', () => {
  let j: JobDaemon;
  let spy: RequestSpy;
  let svc: VmRecord;
  before(async () => {
    j = await startJobDaemon({
      args: ['--job-output-bytes', String(RETAIN)],
      // A job that ignores SIGTERM is SIGKILLed only after a minute: a test
      // decides when it ends (the second Ctrl-C leaves while it still runs).
      hv: createFakeHypervisor({
        agent: 'real',
        realAgent: { jobs: { ...TEST_AGENT_OPTIONS.jobs, killGraceMs: 60_000 } },
      }),
    });
    spy = await spyRequests(j.d);
    svc = await j.serviceVm('svc');
  });
  after(async () => {
    await spy.stop();
    await cleanupAll();
  });

  /** A fresh io whose stdin is an empty pipe (already at its end) unless told otherwise. */
  const newIo = (o: { tty?: boolean; errTty?: boolean; stdin?: string | null } = {}): MemoryIo => {
    const io = memoryIo({ env: cliEnv(j.d), ...o });
    if (!o.tty && o.stdin !== null) io.stdin.end(o.stdin ?? '');
    return io;
  };

  async function mvirt(argv: string[], io: MemoryIo = newIo()) {
    const code = await runCli(argv, io);
    return { code, out: io.out(), err: io.errText(), io };
  }

  /** Start `mvirt run …` and resolve once it has subscribed to the job (its first job.logs). */
  async function started(argv: string[], io: MemoryIo = newIo()) {
    const mark = spy.requests.length;
    const done = mvirt(argv, io);
    const logs = await spy.next('job.logs', mark);
    const jobId = (logs.params as { jobId: string }).jobId;
    return { done, jobId, io, mark };
  }

  /** The params of the first `method` request since `mark`. */
  const sent = (method: string, mark: number): unknown =>
    spy.requests.slice(mark).find((q) => q.method === method)?.params;
  const count = (method: string, mark: number): number =>
    spy.requests.slice(mark).filter((q) => q.method === method).length;
  const goFile = (name: string): string => path.join(j.tmp, name);
  /** The first published record of a job whose argv contains `tag`, once it is in `state`. */
  const jobTagged = (tag: string, state: JobRecord['state']): Promise<JobRecord> =>
    j.rec.until(() => {
      for (const m of j.rec.seen) {
        if (!m.topic.endsWith('/state') || !m.topic.includes('/job/') || m.payload.length === 0)
          continue;
        const r = JSON.parse(m.payload.toString()) as JobRecord;
        if (r.argv.includes(tag) && r.state === state) return r;
      }
      return undefined;
    }, `a job tagged ${tag} ${state}`);

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
    assert.deepEqual(sent('job.run', mark), { argv, vm: 'svc' });
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
    const { done, jobId, io } = await started([
      'run',
      '--vm',
      'svc',
      '--',
      'sh',
      '-c',
      script,
      'sh',
      go,
    ]);
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
    assert.equal((sent('job.run', mark) as { stdin?: string }).stdin, input);

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
    assert.equal((sent('job.run', mark) as { stdin?: string }).stdin, undefined);
  });

  it(
    'refuses stdin beyond the protocol cap or not UTF-8 before submitting anything',
    T,
    async () => {
      const mark = spy.requests.length;
      const io = newIo({ stdin: null });
      io.stdin.write(Buffer.alloc(MAX_STDIN_BYTES, 'a'));
      io.stdin.end('b');
      let r = await mvirt(['run', '--vm', 'svc', '--', 'cat'], io);
      assert.equal(r.code, 2);
      assert.match(r.err, /stdin is larger than [^,]+, the most a job takes[\s\S]*--no-stdin/);

      const bin = newIo({ stdin: null });
      bin.stdin.end(Buffer.from([0x66, 0xff, 0xfe]));
      r = await mvirt(['run', '--vm', 'svc', '--', 'cat'], bin);
      assert.equal(r.code, 2);
      assert.match(r.err, /stdin is not UTF-8 text/);
      assert.equal(spy.requests.length, mark, 'nothing was sent');
    },
  );

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
    });
    assert.equal(count('job.logs', mark), 0, '--detach does not follow');
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

  it('jobs lists jobs as a table, newest first, or as JSON', T, async () => {
    const tab = await j.serviceVm('tab');
    const go = goFile('table-3');
    const ids: string[] = [];
    for (const argv of [
      ['sh', '-c', 'echo "job 1"'],
      ['sh', '-c', 'kill -KILL $$'],
      gated(go, 'job-3'),
    ]) {
      const r = await mvirt(['run', '-d', '--vm', 'tab', '--', ...argv]);
      ids.push(r.out.trim());
      // One after the other: each has ended (or runs) before the next is made.
      await j.rec.job(ids.at(-1)!, ids.length < 3 ? TERMINAL : ['running']);
    }
    const mark = spy.requests.length;
    // Two hours on: every start reads "2h ago"; the running job's duration grows.
    const io = memoryIo({ env: cliEnv(j.d), now: Date.now() + 2 * 3_600_000 });
    const r = await mvirt(['jobs', '--vm', 'tab'], io);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    const row = (id: string, rest: string) => new RegExp(`^${id} +${rest}$`);
    assert.match(lines[0]!, /^ID +STATE +VM +EXIT +STARTED +DURATION +COMMAND$/);
    assert.match(lines[1]!, row(ids[2]!, `running +${tab.id} +- +2h ago +120m\\d\\ds +sh -c .*…`));
    assert.match(
      lines[2]!,
      row(ids[1]!, `failed +${tab.id} +SIGKILL +2h ago +[\\d.]+ m?s +sh -c 'kill -KILL \\$\\$'`),
    );
    assert.match(
      lines[3]!,
      row(ids[0]!, `succeeded +${tab.id} +0 +2h ago +[\\d.]+ m?s +sh -c 'echo "job 1"'`),
    );
    assert.equal(lines.length, 4);
    assert.deepEqual(sent('job.list', mark), { vm: 'tab' });

    const mark2 = spy.requests.length;
    const js = await mvirt(['jobs', '--vm', 'tab', '--state', 'failed', '--limit', '5', '--json']);
    const parsed = JSON.parse(js.out) as { jobs: JobRecord[] };
    assert.deepEqual(
      parsed.jobs.map((x) => [x.jobId, x.signal]),
      [[ids[1], 'SIGKILL']],
    );
    assert.deepEqual(sent('job.list', mark2), { vm: 'tab', state: 'failed', limit: 5 });

    const none = await mvirt(['job', 'ls', '--vm', 'tab', '--state', 'timed_out']);
    assert.equal(none.out, 'no jobs match\n');
    await open(go);
    await j.rec.job(ids[2]!, TERMINAL);
  });

  it('job get shows a job, job cancel cancels one, unknown jobs say what to do', T, async () => {
    const d = await mvirt(['run', '-d', '--vm', 'svc', '--cwd', '/tmp', '--', 'sleep', '100']);
    const jobId = d.out.trim();
    await j.rec.job(jobId, ['running']);
    let r = await mvirt(['job', 'get', jobId]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^State: +running$/m);
    assert.match(r.out, /^Command: +sleep 100$/m);
    // The daemon keeps the VM it resolved the name to.
    assert.match(r.out, new RegExp(`^Target: +vm ${svc.id}$`, 'm'));
    assert.match(r.out, new RegExp(`^VM: +${svc.id}$`, 'm'));
    assert.match(r.out, /^Cwd: +\/tmp$/m);
    const js = await mvirt(['job', 'get', jobId, '--json']);
    assert.equal((JSON.parse(js.out) as JobRecord).state, 'running');

    r = await mvirt(['job', 'cancel', jobId]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${jobId} is cancelled\n`);
    assert.match(
      (await mvirt(['job', 'get', jobId])).out,
      /^State: +cancelled \(cancelled by request\)$/m,
    );

    for (const argv of [
      ['job', 'get', 'job-ffffffffffff'],
      ['job', 'cancel', 'job-ffffffffffff'],
      ['logs', 'job-ffffffffffff'],
    ]) {
      r = await mvirt(argv);
      assert.equal(r.code, 1, argv.join(' '));
      assert.match(r.err, /JOB_NOT_FOUND[\s\S]*hint: `mvirt jobs` lists the jobs/);
    }
  });

  it(
    'logs prints the stored output by stream, in order, and notes what retention dropped once',
    T,
    async () => {
      const script =
        'for i in 0 1 2 3 4 5 6; do if [ $((i % 3)) = 2 ]; then echo $i >&2; else echo $i; fi; done';
      const small = (
        await mvirt(['run', '-d', '--vm', 'svc', '--', 'sh', '-c', script])
      ).out.trim();
      await j.rec.job(small, TERMINAL);
      let r = await mvirt(['logs', small]);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out, '0\n1\n3\n4\n6\n');
      assert.equal(r.err, '2\n5\n');
      // -f of a job that has ended: the same, then done.
      const f = await mvirt(['logs', '-f', small]);
      assert.deepEqual([f.code, f.out, f.err], [0, '0\n1\n3\n4\n6\n', '2\n5\n']);

      // Twice the retention, a line per chunk: the oldest chunks are dropped.
      const lines =
        'i=0; while [ $i -lt 40 ]; do printf "%0199d\\n" $i; sleep 0.002; i=$((i+1)); done';
      const big = (await mvirt(['run', '-d', '--vm', 'svc', '--', 'sh', '-c', lines])).out.trim();
      const done = await j.rec.job(big, TERMINAL);
      assert.equal(done.state, 'succeeded', done.reason);
      const mark = spy.requests.length;
      r = await mvirt(['logs', big]);
      assert.equal(r.code, 0, r.err);
      assert.equal(count('job.logs', mark), 1, 'one page');
      const { firstSeq } = result(await j.c.call('job.logs', { jobId: big, fromSeq: 0 }));
      assert.ok(firstSeq > 0, 'retention dropped the oldest chunks');
      const kept = j.rec.outputs(big).filter((c) => c.seq >= firstSeq);
      assert.equal(r.out, text(kept), 'exactly what is still stored');
      assert.equal(
        r.err,
        `mvirt: note: ${firstSeq} output chunk${firstSeq === 1 ? '' : 's'} of ${big} before #${firstSeq} ` +
          `${firstSeq === 1 ? 'was' : 'were'} dropped by the daemon's output retention and cannot be shown\n`,
      );

      const js = await mvirt(['logs', big, '--json']);
      const chunks = js.out
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l) as OutputChunk);
      assert.deepEqual(chunks, kept);
    },
  );

  it('logs -f prints what is stored, then follows until the job has ended', T, async () => {
    const go = goFile('follow');
    const script =
      'echo before; until [ -e "$1" ]; do sleep 0.01; done; echo after; echo oops >&2; exit 1';
    const jobId = (
      await mvirt(['run', '-d', '--vm', 'svc', '--', 'sh', '-c', script, 'sh', go])
    ).out.trim();
    // Written before `logs -f` starts: it comes from the store.
    await j.rec.until(
      () => (text(j.rec.outputs(jobId)) === 'before\n' ? true : undefined),
      'before',
    );
    const io = newIo();
    const following = mvirt(['logs', '-f', jobId], io);
    await io.waitOut('before\n');
    await open(go);
    const r = await following;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'before\nafter\n');
    assert.equal(r.err, 'oops\n');
  });

  it('logs -f stops at Ctrl-C and leaves the job alone', T, async () => {
    const go = goFile('follow-stop');
    const jobId = (await mvirt(['run', '-d', '--vm', 'svc', '--', ...gated(go)])).out.trim();
    const io = newIo();
    const mark = spy.requests.length;
    const following = mvirt(['logs', '-f', jobId], io);
    await io.waitOut('start\n');
    io.signal('SIGINT');
    const r = await following;
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'start\n');
    assert.equal(count('job.cancel', mark), 0);
    assert.equal(result(await j.c.call('job.get', { jobId })).state, 'running');
    await open(go);
    assert.equal((await j.rec.job(jobId, TERMINAL)).state, 'succeeded');
  });

  it('pool set, ls, get and rm; run --pool takes a pool VM', T, async () => {
    await writeFakeImage(path.join(j.dataDir, 'images'), 'tiny');
    const mark = spy.requests.length;
    let r = await mvirt(['pool', 'set', 'builders', '--min', '2', '--max', '4', '--vcpus', '2']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(sent('pool.set', mark), { name: 'builders', min: 2, max: 4, vcpus: 2 });
    assert.match(
      r.out,
      /^pool builders: 2–4 VMs of default \(2 vCPU, 256 MiB\); now \d+ ready, \d+ starting, 0 busy\n$/,
    );
    r = await mvirt(['pool', 'set', 'alpha', '--min', '0', '--image', 'tiny']);
    assert.equal(r.code, 0, r.err);
    r = await mvirt(['pool', 'set', 'beta', '--min', '0', '--image', 'no-such-image']);
    assert.equal(r.code, 1);
    assert.match(r.err, /IMAGE_NOT_FOUND[\s\S]*hint: build it/);

    await j.rec.until(
      () => (j.rec.poolStates('builders').at(-1)?.vms.ready === 2 ? true : undefined),
      'two builders ready',
    );
    r = await mvirt(['pool', 'ls']);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    assert.match(lines[0]!, /^NAME +IMAGE +MIN +MAX +VCPUS +MEMORY +READY +STARTING +BUSY$/);
    assert.match(lines[1]!, /^alpha +tiny +0 +1 +1 +256 MiB +0 +0 +0$/);
    assert.match(lines[2]!, /^builders +default +2 +4 +2 +256 MiB +2 +0 +0$/);
    assert.equal(lines.length, 3);

    r = await mvirt(['pool', 'ls', '--json']);
    assert.deepEqual(
      (JSON.parse(r.out) as { pools: { name: string }[] }).pools.map((p) => p.name).sort(),
      ['alpha', 'builders'],
    );
    r = await mvirt(['pool', 'get', 'builders']);
    assert.match(r.out, /^Max: +4$/m);
    assert.match(r.out, /^VMs: +2 ready, 0 starting, 0 busy$/m);

    r = await mvirt(['run', '--pool', 'builders', '--', 'echo', 'from the pool']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'from the pool\n');
    r = await mvirt(['run', '--pool', 'builders', '-d', '--json', '--', 'true']);
    const detached = JSON.parse(r.out) as JobRecord;
    assert.deepEqual(detached.target, { kind: 'pool', pool: 'builders' });
    assert.equal((await j.rec.job(detached.jobId, TERMINAL)).state, 'succeeded');

    // Removed while it refills: every one of its VMs goes (the daemon logs no error).
    r = await mvirt(['pool', 'rm', 'builders']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'deleted pool builders\n');
    await j.rec.until(
      () =>
        j.rec.liveVms().every((v) => v.metadata['mvirt.pool'] !== 'builders') ? true : undefined,
      'the builders VMs gone',
    );
    r = await mvirt(['pool', 'get', 'builders']);
    assert.equal(r.code, 1);
    assert.match(r.err, /POOL_NOT_FOUND[\s\S]*hint: `mvirt pool ls` lists the pools/);
    assert.equal((await mvirt(['pool', 'rm', 'alpha'])).code, 0);
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
    // The OOM killer is a SIGKILL no fake VM can produce: its note, from the record.
    const oom = jobExit(
      rec({ state: 'failed', exitCode: null, signal: 'SIGKILL', oomKilled: true }),
    );
    assert.equal(oom.code, 137);
    assert.match(oom.note ?? '', /killed by SIGKILL \(out of memory: the OOM killer\)/);
    assert.equal(shellLine(['sh', '-c', "echo 'hi there'"]), `sh -c 'echo '\\''hi there'\\'''`);
  });
});
