/**
 * `mvirt run` (the built CLI, its own process) against the real mvirtd and a
 * real microVM under QEMU: the job's output on the right streams, the job's
 * exit code as the CLI's, and Ctrl-C (SIGINT to the CLI) cancelling the job
 * in the guest: the job ends `cancelled` and the CLI exits 130
 * (docs/cli.md, "Exit codes").
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { imagesDir } from '../../harness/build.js';
import type { RpcClient } from '../../harness/client.js';
import type { DaemonAddress } from '../../harness/connect.js';
import { REPO } from '../../harness/paths.js';
import { mvirt, startMvirt } from '../support/cli.js';
import { BOOT_MS, explained, ok, qemuDaemon, tempDataDir, trackPid } from '../support/qemu.js';

const JOB_MS = 120_000;

describe('mvirt run against a real microVM', { timeout: BOOT_MS + 4 * JOB_MS }, () => {
  let c: RpcClient;
  let daemon: DaemonAddress;
  before(async () => {
    // The default image where `npm test` builds it (a cached build when missing).
    await imagesDir({ dataDir: path.join(REPO, 'test-output/data') });
    const dataDir = await tempDataDir('mvirt-run-it-');
    const q = await qemuDaemon(dataDir);
    c = q.c;
    daemon = q.d;
    ok(await c.call('vm.create', { name: 'runner', memoryMiB: 256 }));
    const vm = ok(
      await c.call('vm.start', { vm: 'runner', wait: true }, { timeoutMs: BOOT_MS + 10_000 }),
    );
    trackPid(vm.pid);
    assert.equal(vm.state, 'ready');
  });

  it('prints stdout and stderr apart and exits with the job exit code', async () => {
    await explained(async () => {
      const r = await mvirt(
        ['run', '--vm', 'runner', '--', 'sh', '-c', 'echo to-out; echo to-err >&2; exit 7'],
        { daemon },
      );
      assert.equal(r.code, 7, r.stderr);
      assert.equal(r.stdout, 'to-out\n');
      assert.match(r.stderr, /^to-err$/m);
    });
  });

  it('passes piped stdin and exits 0 on success', async () => {
    await explained(async () => {
      const r = await mvirt(['run', '--vm', 'runner', '--', 'wc', '-c'], {
        daemon,
        input: 'twelve bytes',
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), '12');
    });
  });

  it('is binary-safe both ways: cat of a binary is byte-identical, binary stdin arrives whole', async () => {
    await explained(async () => {
      const r = await mvirt(['run', '--vm', 'runner', '--', 'cat', '/bin/busybox'], { daemon });
      assert.equal(r.code, 0, r.stderr);
      const inGuest = ok(
        await c.call(
          'job.run',
          { vm: 'runner', argv: ['sha256sum', '/bin/busybox'], wait: true },
          { timeoutMs: JOB_MS },
        ),
      );
      assert.ok(r.stdoutBytes.length > 100_000, `${r.stdoutBytes.length} bytes`);
      assert.equal(
        createHash('sha256').update(r.stdoutBytes).digest('hex'),
        inGuest.stdout!.split(' ')[0],
      );

      const input = randomBytes(3 * 1024 * 1024 + 7);
      const sum = await mvirt(['run', '--vm', 'runner', '--', 'sha256sum'], { daemon, input });
      assert.equal(sum.code, 0, sum.stderr);
      assert.equal(sum.stdout.split(' ')[0], createHash('sha256').update(input).digest('hex'));
    });
  });

  it('Ctrl-C cancels the job in the guest: the job ends cancelled, the CLI exits 130', async () => {
    await explained(async () => {
      const cli = startMvirt(
        ['run', '--vm', 'runner', '--', 'sh', '-c', 'echo started; exec sleep 600'],
        { daemon },
      );
      // The job runs in the guest once its first output is back.
      await cli.waitOut('started\n');
      const running = ok(await c.call('job.list', { vm: 'runner', state: 'running' })).jobs;
      assert.equal(running.length, 1, 'the sleeping job runs');
      const jobId = running[0]!.jobId;
      cli.child.kill('SIGINT');
      const r = await cli.done;
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stderr, new RegExp(`cancelling ${jobId}`));
      const job = ok(await c.call('job.get', { jobId }));
      assert.equal(job.state, 'cancelled');
      assert.ok(job.finishedAt, 'the job has ended');
      // Its process group is gone from the guest.
      const ps = ok(
        await c.call(
          'job.run',
          { vm: 'runner', argv: ['sh', '-c', 'cat /proc/[0-9]*/comm 2>/dev/null'], wait: true },
          { timeoutMs: JOB_MS },
        ),
      );
      assert.doesNotMatch(ps.stdout ?? '', /^sleep$/m, 'no sleep left in the guest');
    });
  });
});
