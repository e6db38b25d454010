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
  MIN_JOBS_BYTES,
  SYSTEM_RESERVE_BYTES,
  createJobGroups,
  sizeGroups,
} from '../../../guest-agent/platform/cgroups.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function fakeMount(agentCurrent: number | null) {
  const root = mkdtempSync(path.join(os.tmpdir(), 'mvirt-cgroup-'));
  dirs.push(root);
  mkdirSync(path.join(root, 'agent'));
  mkdirSync(path.join(root, 'jobs'));
  if (agentCurrent !== null)
    writeFileSync(path.join(root, 'agent', 'memory.current'), `${agentCurrent}\n`);
  const meminfoPath = path.join(root, 'meminfo');
  writeFileSync(meminfoPath, 'MemTotal:         231424 kB\nMemFree:          100000 kB\n');
  return { root, meminfoPath, read: (p: string) => readFileSync(path.join(root, p), 'utf8') };
}

test('sizes: the agent keeps its usage plus headroom, jobs get the rest minus the system reserve', () => {
  const s = sizeGroups(226 * MiB, 60 * MiB);
  assert.equal(s.agentMin, 60 * MiB + AGENT_HEADROOM_BYTES);
  assert.equal(s.jobsMax, 226 * MiB - s.agentMin - SYSTEM_RESERVE_BYTES);
  // A tiny VM still leaves jobs something to run in.
  assert.equal(sizeGroups(96 * MiB, 70 * MiB).jobsMax, MIN_JOBS_BYTES);
});

test('place: sizes the groups once, moves the job, counts its OOM kills, removes it', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  const g = await groups.place('job-abc', 4242);
  assert.ok(g);
  const want = sizeGroups(231424 * 1024, 50 * MiB);
  assert.equal(m.read('agent/memory.min'), String(want.agentMin));
  assert.equal(m.read('jobs/memory.max'), String(want.jobsMax));
  assert.equal(m.read('jobs/job-abc/cgroup.procs'), '4242');
  assert.equal(m.read('jobs/job-abc/memory.oom.group'), '1');
  assert.equal(await g.oomKills(), null, 'no memory.events yet');
  writeFileSync(
    path.join(m.root, 'jobs/job-abc/memory.events'),
    'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n',
  );
  assert.equal(await g.oomKills(), 1);
  // A second job of the same id (an agent restarted under a resent exec) gets its own group.
  const again = await groups.place('job-abc', 4243);
  assert.ok(again);
  assert.ok(existsSync(path.join(m.root, 'jobs')));
});

test('place: a hostile job id never names a path outside jobs/', async () => {
  const m = fakeMount(50 * MiB);
  const groups = createJobGroups({ root: m.root, meminfoPath: m.meminfoPath });
  assert.ok(await groups.place('../agent', 1));
  assert.equal(m.read('jobs/job/cgroup.procs'), '1');
  assert.equal(existsSync(path.join(m.root, 'agent', 'cgroup.procs')), false);
});

test('no cgroup mount (or no agent group): jobs run without groups, as before', async () => {
  const m = fakeMount(null);
  assert.equal(
    await createJobGroups({ root: m.root, meminfoPath: m.meminfoPath }).place('job-x', 1),
    null,
  );
  const missing = path.join(m.root, 'nowhere');
  assert.equal(
    await createJobGroups({ root: missing, meminfoPath: m.meminfoPath }).place('job-x', 1),
    null,
  );
});
