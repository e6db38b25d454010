/**
 * Job groups against a folder laid out as the µOS's cgroup v2 mount (rcS
 * makes agent/ and jobs/). The kernel's side (the cap, the OOM kill, the
 * per-group count) is checked in a real guest by daemon-qemu.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  AGENT_HEADROOM_BYTES,
  SYSTEM_RESERVE_BYTES,
  createJobGroups,
  sizeGroups,
} from '../../../guest-agent/platform/cgroups.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Resolves once `cond` holds (groups are made ahead on a later turn). */
async function until(cond: () => boolean, what = 'the groups made ahead'): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function fakeMount(agentCurrent: number | null, controllers = 'cpu memory pids') {
  const root = mkdtempSync(path.join(os.tmpdir(), 'mvirt-cgroup-'));
  dirs.push(root);
  mkdirSync(path.join(root, 'agent'));
  mkdirSync(path.join(root, 'jobs'));
  writeFileSync(path.join(root, 'jobs', 'cgroup.subtree_control'), `${controllers}\n`);
  if (agentCurrent !== null)
    writeFileSync(path.join(root, 'agent', 'memory.current'), `${agentCurrent}\n`);
  const meminfoPath = path.join(root, 'meminfo');
  writeFileSync(meminfoPath, 'MemTotal:         231424 kB\nMemFree:          100000 kB\n');
  return { root, meminfoPath, read: (p: string) => readFileSync(path.join(root, p), 'utf8') };
}

test('sizes: the agent keeps its usage plus headroom, jobs get what is free less its growth and the reserve', () => {
  // A 256 MiB VM of the default image, as read at its first job.
  const s = sizeGroups(206 * MiB, 101 * MiB, 71 * MiB);
  assert.equal(s.agentLow, 71 * MiB + AGENT_HEADROOM_BYTES);
  assert.equal(s.jobsMax, 101 * MiB - AGENT_HEADROOM_BYTES - SYSTEM_RESERVE_BYTES);
  assert.equal(s.jobsMax, 77 * MiB);
  // Never more than the VM leaves beside the agent's protection, whatever is free.
  const all = sizeGroups(206 * MiB, 206 * MiB, 71 * MiB).jobsMax;
  assert.equal(all, 206 * MiB - s.agentLow - SYSTEM_RESERVE_BYTES);
});

test('sizes: a small VM never promises more than it has', () => {
  for (const [total, free, agent] of [
    [80, 5, 51], // a 128 MiB VM of the default image
    [40, 0, 60], // an agent bigger than the VM
    [961, 850, 80], // 1 GiB
  ] as const) {
    const s = sizeGroups(total * MiB, free * MiB, agent * MiB);
    assert.ok(s.agentLow <= (total * MiB) / 2, `${total}: agent protected ${s.agentLow}`);
    assert.ok(s.jobsMax >= (total * MiB) / 4 - 1, `${total}: jobs ${s.jobsMax}`);
    assert.ok(
      s.agentLow + s.jobsMax + SYSTEM_RESERVE_BYTES <= total * MiB,
      `${total} MiB: ${s.agentLow} + ${s.jobsMax} + reserve`,
    );
  }
  assert.equal(sizeGroups(80 * MiB, 5 * MiB, 51 * MiB).jobsMax, 20 * MiB, 'a quarter at least');
});

test('a job without limits: the groups sized once, its own group made, its OOM kills counted', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const g = await groups.limited({});
  const want = sizeGroups(231424 * 1024, 100000 * 1024, 50 * MiB);
  assert.equal(m.read('agent/memory.low'), String(want.agentLow));
  assert.equal(m.read('jobs/memory.max'), String(want.jobsMax));
  assert.equal(
    g.procs,
    path.join(m.root, 'jobs/g1/cgroup.procs'),
    'the job enters it as it starts',
  );
  assert.equal(m.read('jobs/g1/memory.oom.group'), '1');
  assert.equal(existsSync(path.join(m.root, 'jobs/g1/memory.max')), false, 'no limit of its own');
  assert.equal(await g.oomKills(), null, 'no memory.events yet');
  writeFileSync(
    path.join(m.root, 'jobs/g1/memory.events'),
    'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n',
  );
  assert.equal(await g.oomKills(), 1);
  // A second job at once gets its own group.
  assert.equal((await groups.limited({})).procs, path.join(m.root, 'jobs/g2/cgroup.procs'));
});

test('groups made ahead: after each job, the next job finds its group made', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const first = await groups.limited({});
  assert.match(first.procs, /jobs\/g1\/cgroup\.procs$/, 'the first job makes its own');
  await new Promise((r) => setImmediate(r));
  assert.equal(existsSync(path.join(m.root, 'jobs/g2')), false, 'none made while it runs');
  writeFileSync(first.procs, '10'); // the job in it: the group stays, a leftover
  await first.remove();
  await until(() => existsSync(path.join(m.root, 'jobs/g2/memory.oom.group')));
  assert.equal(existsSync(path.join(m.root, 'jobs/g2/cgroup.procs')), false, 'empty until a job');
  assert.match((await groups.limited({})).procs, /jobs\/g2\/cgroup\.procs$/);
});

test('groups an earlier agent left: their numbers skipped, the empty ones removed', async () => {
  const m = fakeMount(50 * MiB);
  mkdirSync(path.join(m.root, 'jobs/g1')); // its spare, empty
  mkdirSync(path.join(m.root, 'jobs/g2')); // a job of its own
  writeFileSync(path.join(m.root, 'jobs/g2/cgroup.procs'), '77');
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const g = await groups.limited({});
  assert.equal(g.procs, path.join(m.root, 'jobs/g3/cgroup.procs'));
  await g.remove();
  await until(() => !existsSync(path.join(m.root, 'jobs/g1')));
  assert.equal(m.read('jobs/g2/cgroup.procs'), '77', "the other agent's job untouched");
});

test('no cgroup mount (or no agent group): no group, saying why (jobs without limits run all the same)', async () => {
  const m = fakeMount(null);
  const why = /cgroup v2 with memory groups/;
  await assert.rejects(
    createJobGroups({ root: m.root, meminfoPath: m.meminfoPath }).limited({}),
    why,
  );
  const missing = path.join(m.root, 'nowhere');
  await assert.rejects(
    createJobGroups({ root: missing, meminfoPath: m.meminfoPath }).limited({}),
    why,
  );
});

test('limited: memory.max and cpu.max set before the job exists; the job enters it itself', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const g = await groups.limited({ memoryMiB: 64, cpus: 0.5 });
  assert.equal(m.read('jobs/g1/memory.max'), String(64 * MiB));
  assert.equal(m.read('jobs/g1/cpu.max'), '50000 100000');
  assert.equal(m.read('jobs/g1/memory.oom.group'), '1');
  assert.equal(g.procs, path.join(m.root, 'jobs/g1/cgroup.procs'));
  assert.equal(existsSync(g.procs), false, 'no process moved in by the agent');
  // The smallest share job.run takes: 1 ms in each 100 ms, the kernel's minimum quota.
  await groups.limited({ cpus: 0.01 });
  assert.equal(m.read('jobs/g2/cpu.max'), '1000 100000');
  assert.equal(existsSync(path.join(m.root, 'jobs/g2/memory.max')), false);
});

test('limited: refused, saying why, without groups or without a cpu controller; nothing left', async () => {
  const none = fakeMount(null);
  await assert.rejects(
    createJobGroups({ root: none.root, meminfoPath: none.meminfoPath }).limited({ memoryMiB: 8 }),
    /cgroup v2 with memory groups/,
  );
  const m = fakeMount(50 * MiB, 'memory pids');
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  await assert.rejects(groups.limited({ cpus: 1, memoryMiB: 8 }), /no cpu controller/);
  assert.equal(existsSync(path.join(m.root, 'jobs/g1')), false, 'no group made');
  const noMem = fakeMount(50 * MiB, 'cpu pids');
  await assert.rejects(
    createJobGroups({ root: noMem.root, meminfoPath: noMem.meminfoPath }).limited({ memoryMiB: 8 }),
    /no memory controller/,
  );
  // Without limits of its kind, the job is fine.
  assert.ok(await groups.limited({ memoryMiB: 8 }));
});

test('usage: CPU time from cpu.stat and the peak from memory.peak; null when unreadable', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const g = await groups.limited({});
  assert.equal(await g.usage(), null, 'nothing to read yet');
  writeFileSync(
    path.join(m.root, 'jobs/g1/cpu.stat'),
    'usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n',
  );
  writeFileSync(path.join(m.root, 'jobs/g1/memory.peak'), `${5 * MiB}\n`);
  assert.deepEqual(await g.usage(), { cpuMs: 123, peakMemoryBytes: 5 * MiB });
  writeFileSync(path.join(m.root, 'jobs/g1/memory.peak'), 'max\n');
  assert.equal(await g.usage(), null, 'a value that is not a count');
});
