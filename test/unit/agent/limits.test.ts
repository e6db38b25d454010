/**
 * Per-job limits in the agent's core (issue 17): a job with limits gets its
 * group made first and enters it itself before its command runs; what it
 * used comes back in its exit record; limits that cannot be had fail the job
 * before anything runs, and a missing command fails as it does without
 * limits. The kernel's side (the cap binding, cpu.max throttling) is checked
 * in a real guest by guest-tools-qemu.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { nextId, jobOutput, startHarness, type Harness } from '../../support/agent-harness.js';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(() => h.close());

async function run(msg: Record<string, unknown>) {
  const jobId = nextId('job');
  const exited = h.waitFor('exit', (e) => e.jobId === jobId);
  const reply = await h.request('exec', { id: nextId(), jobId, ...msg });
  return { jobId, reply, exit: await exited };
}

test('a limited job enters its group before its command runs; its usage is in the exit', async () => {
  const jobId = nextId('job');
  const exited = h.waitFor('exit', (e) => e.jobId === jobId);
  // The group's usage is what the kernel reports as the job ends.
  h.platform.events.once('spawn', () => {
    const g = h.platform.groups.get(jobId)!;
    g.usage = { cpuMs: 12, peakMemoryBytes: 3 << 20 };
  });
  const reply = await h.request('exec', {
    id: nextId(),
    jobId,
    argv: ['sh', '-c', 'echo "$0:$*"', 'me', 'a b'],
    limits: { memoryMiB: 64, cpus: 0.5 },
  });
  assert.equal(reply.ok, true, JSON.stringify(reply.error));
  const exit = await exited;
  const g = h.platform.groups.get(jobId)!;
  assert.deepEqual(g.limits, { memoryMiB: 64, cpus: 0.5 });
  assert.equal(g.entered, '0\n', "its wrapper wrote 0 into the group's process file");
  assert.equal(exit.exitCode, 0);
  assert.equal(jobOutput(h, jobId), 'me:a b\n', 'argv reaches the command unchanged');
  assert.deepEqual(exit.usage, { cpuMs: 12, peakMemoryBytes: 3 << 20 });
  assert.equal(g.removed, true, 'the group goes with the job');
});

test('limits the guest cannot enforce: SPAWN_FAILED saying why; nothing ran', async () => {
  h.platform.failures.limits = 'no cpu controller here';
  try {
    const { jobId, reply, exit } = await run({
      argv: ['sh', '-c', 'echo ran'],
      limits: { cpus: 1 },
    });
    assert.equal(reply.ok, false);
    assert.equal(reply.error?.code, 'SPAWN_FAILED');
    assert.match(
      reply.error?.message ?? '',
      /cannot apply the job's limits: no cpu controller here/,
    );
    assert.match(exit.error ?? '', /no cpu controller here/);
    assert.equal(exit.usage, undefined);
    assert.equal(jobOutput(h, jobId), '');
  } finally {
    delete h.platform.failures.limits;
  }
});

test('a missing command fails with limits as without: ENOENT, and its group goes', async () => {
  const { jobId, reply, exit } = await run({
    argv: ['/nonexistent/program'],
    limits: { memoryMiB: 32 },
  });
  assert.equal(reply.ok, false);
  assert.equal(reply.error?.code, 'SPAWN_FAILED');
  assert.match(reply.error?.message ?? '', /ENOENT/);
  assert.match(exit.error ?? '', /ENOENT/);
  assert.equal(h.platform.groups.get(jobId)?.removed, true);
});

test('a job without limits enters its own group as it starts; its usage is reported', async () => {
  const jobId = nextId('job');
  const exited = h.waitFor('exit', (e) => e.jobId === jobId);
  const reply = await h.request('exec', {
    id: nextId(),
    jobId,
    argv: ['sh', '-c', 'read x'],
    stdin: Buffer.from('go\n'),
  });
  const g = h.platform.groups.get(jobId);
  assert.ok(g);
  g.usage = { cpuMs: 1, peakMemoryBytes: 4096 };
  const exit = await exited;
  assert.equal(reply.ok, true);
  assert.equal(g.entered, '0\n', 'it entered its own group as it started');
  assert.deepEqual(exit.usage, { cpuMs: 1, peakMemoryBytes: 4096 });
});
