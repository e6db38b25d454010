/**
 * `mvirt jobs`, `job …`, `logs` and `pool …` in-process against the real
 * mvirtd (the fixture of test/support/cli-jobs.ts, shared with run.test.ts),
 * and the usage errors and exit codes of the job commands.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { runCli, type ClientFactory } from '../../../host/cli/run.js';
import { jobExit, shellLine } from '../../../host/cli/job-view.js';
import type { JobRecord, OutputChunk, VmRecord } from '../../../protocol/rpc.js';
import { writeFakeImage, type RequestSpy } from '../../../harness/daemon.js';
import { cliEnv } from '../../../harness/connect.js';
import { memoryIo } from '../../support/cli-io.js';
import { cliJobsFixture, T } from '../../support/cli-jobs.js';
import { gated, open, result, TERMINAL, text, type JobDaemon } from '../../support/jobs.js';

describe('mvirt jobs, job, logs and pool against mvirtd', () => {
  const f = cliJobsFixture();
  let j: JobDaemon;
  let spy: RequestSpy;
  let svc: VmRecord;
  before(() => ({ j, spy, svc } = f));
  const { newIo, mvirt, sent, count, goFile } = f;

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

  it(
    'run --limit-memory and --limit-cpus reach the job; a guest without groups says why it failed',
    T,
    async () => {
      const d = await mvirt([
        'run',
        '-d',
        '--json',
        '--vm',
        'svc',
        '--limit-memory',
        '64',
        '--limit-cpus',
        '0.5',
        '--',
        'true',
      ]);
      assert.equal(d.code, 0, d.err);
      const rec = JSON.parse(d.out) as JobRecord;
      assert.deepEqual(rec.limits, { memoryMiB: 64, cpus: 0.5 });
      await j.rec.job(rec.jobId, TERMINAL);
      const r = await mvirt(['job', 'get', rec.jobId]);
      assert.match(r.out, /^Limits: +memory 64 MiB, 0\.5 CPUs$/m);
      // The test's fake guest has no cgroups: the job is refused before it runs, saying why.
      assert.match(
        r.out,
        /^State: +failed \(.*cannot apply the job's limits: per-job limits need cgroup v2/m,
      );
    },
  );

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

    // Signals: by name with or without SIG; a job that is over says so, typed.
    const trap = await mvirt([
      'run',
      '-d',
      '--vm',
      'svc',
      '--',
      'sh',
      '-c',
      'trap "echo hup; exit 5" HUP; echo armed; while :; do sleep 0.05; done',
    ]);
    const trapId = trap.out.trim();
    await j.rec.until(
      () => (text(j.rec.outputs(trapId)) === 'armed\n' ? true : undefined),
      'the trap is set',
    );
    r = await mvirt(['job', 'signal', trapId, 'hup']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `SIGHUP sent to ${trapId}\n`);
    assert.equal((await j.rec.job(trapId, TERMINAL)).exitCode, 5);
    r = await mvirt(['job', 'signal', trapId, 'SIGHUP']);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /has ended \(failed\): there is nothing left to signal[\s\S]*hint: `mvirt job get JOB`/,
    );
    r = await mvirt(['job', 'signal', trapId, 'SIGWHAT']);
    assert.equal(r.code, 2);
    assert.match(r.err, /SIGNAL must be one of SIGTERM, SIGKILL/);

    for (const argv of [
      ['job', 'get', 'job-ffffffffffff'],
      ['job', 'cancel', 'job-ffffffffffff'],
      ['job', 'signal', 'job-ffffffffffff', 'TERM'],
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
