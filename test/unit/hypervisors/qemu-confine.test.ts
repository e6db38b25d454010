/**
 * The confinement plumbing without QEMU: which cgroup hierarchy is picked
 * from a host's mount table (v2 with the controllers, this project's hybrid
 * v1 layout, none), the limit files a VM cgroup gets (in a scratch tree laid
 * out like cgroupfs), and a daemon that is not root saying once that QEMU
 * runs unconfined and why, then starting QEMU as itself with an empty
 * environment. The real thing is test/integration/qemu-confine.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, test } from 'node:test';
import pino from 'pino';
import { parseMountinfo, probeCgroups } from '../../../host/hypervisors/qemu/cgroup.js';
import {
  createConfiner,
  memoryLimitBytes,
  QEMU_OVERHEAD_BASE_MIB,
  resolveProgram,
} from '../../../host/hypervisors/qemu/confine.js';
import type { LaunchSpec } from '../../../host/hypervisors/types.js';

const scratch = await mkdtemp(path.join(os.tmpdir(), 'mvirt-confine-unit-'));
after(() => rm(scratch, { recursive: true, force: true }));

const line = (id: number, point: string, fstype: string, opts: string) =>
  `${id} 1 0:${id} / ${point} rw,nosuid - ${fstype} ${fstype} ${opts}`;

test('mountinfo: mount point, fstype and super options', () => {
  const [m] = parseMountinfo(line(30, '/sys/fs/cgroup/cpu', 'cgroup', 'rw,cpu,cpuacct'));
  assert.deepEqual(m, {
    point: '/sys/fs/cgroup/cpu',
    fstype: 'cgroup',
    superOpts: ['rw', 'cpu', 'cpuacct'],
  });
});

test('cgroups: v2 when its mount offers cpu, memory and pids', async () => {
  const v2 = path.join(scratch, 'v2');
  await mkdir(v2, { recursive: true });
  await writeFile(path.join(v2, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids\n');
  const probe = probeCgroups(line(1, v2, 'cgroup2', 'rw,nsdelegate'));
  assert.equal(probe.driver?.version, 'v2');

  const cg = await probe.driver.create('g1', 'vm-1', {
    vcpus: 2,
    memoryBytes: 512 << 20,
    pids: 128,
  });
  const dir = path.join(v2, 'mvirt', 'g1', 'vm-1');
  assert.deepEqual(cg.dirs, [dir]);
  assert.equal(await readFile(path.join(dir, 'memory.max'), 'utf8'), String(512 << 20));
  assert.equal(await readFile(path.join(dir, 'cpu.max'), 'utf8'), '200000 100000');
  assert.equal(await readFile(path.join(dir, 'pids.max'), 'utf8'), '128');
  // Controllers enabled on each level above the VM's cgroup.
  for (const d of [v2, path.join(v2, 'mvirt'), path.join(v2, 'mvirt', 'g1')]) {
    assert.equal(
      await readFile(path.join(d, 'cgroup.subtree_control'), 'utf8'),
      '+cpu +memory +pids',
    );
  }
  assert.deepEqual(await probe.driver.list('g1'), ['vm-1']);
  await assert.rejects(
    probe.driver.create('g1', '../escape', { vcpus: 1, memoryBytes: 1, pids: 1 }),
    /bad cgroup name/,
  );
});

test('cgroups: v1 on a hybrid host whose cgroup2 mount has no controllers (the dev machines)', async () => {
  const root = path.join(scratch, 'v1');
  const unified = path.join(root, 'unified');
  await mkdir(unified, { recursive: true });
  await writeFile(path.join(unified, 'cgroup.controllers'), 'hugetlb\n');
  for (const c of ['memory', 'cpu', 'pids']) await mkdir(path.join(root, c), { recursive: true });
  const probe = probeCgroups(
    [
      line(1, unified, 'cgroup2', 'rw'),
      line(2, path.join(root, 'cpu'), 'cgroup', 'rw,cpu'),
      line(3, path.join(root, 'memory'), 'cgroup', 'rw,memory'),
      line(4, path.join(root, 'pids'), 'cgroup', 'rw,pids'),
    ].join('\n'),
  );
  assert.equal(probe.driver?.version, 'v1');
  await probe.driver.create('g', 'vm-2', { vcpus: 1, memoryBytes: 300 << 20, pids: 64 });
  const at = (c: string, f: string) =>
    readFile(path.join(root, c, 'mvirt', 'g', 'vm-2', f), 'utf8');
  assert.equal(await at('memory', 'memory.limit_in_bytes'), String(300 << 20));
  assert.equal(await at('cpu', 'cpu.cfs_quota_us'), '100000');
  assert.equal(await at('cpu', 'cpu.cfs_period_us'), '100000');
  assert.equal(await at('pids', 'pids.max'), '64');
});

test('cgroups: none without the controllers, and why', () => {
  const probe = probeCgroups(line(1, '/sys/fs/cgroup/cpu', 'cgroup', 'rw,cpu'));
  assert.equal(probe.driver, null);
  assert.match(probe.reason, /cpu, memory and pids/);
});

test('memory limit: guest RAM + the TCG cache + the measured QEMU overhead', () => {
  assert.equal(memoryLimitBytes(256, 128), (256 + 128 + QEMU_OVERHEAD_BASE_MIB) * 2 ** 20);
});

test('not root: says once that QEMU runs unconfined and why, runs it as itself with an empty environment', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const confiner = createConfiner(
    {
      enabled: true,
      seccomp: true,
      uidBase: 100_000,
      uidCount: 10,
      tcgTbSizeMiB: 128,
      setpriv: 'setpriv',
      isRoot: false,
    },
    pino({ level: 'info' }, sink),
  );
  assert.equal(confiner.state.user, false);
  assert.equal(confiner.state.cgroup, null);
  assert.equal(confiner.state.seccomp, true);
  assert.match(confiner.state.reasons.join(), /not root/);
  const warned = lines.filter((l) => l.includes('unconfined'));
  assert.equal(warned.length, 1, lines.join(''));
  assert.equal((JSON.parse(warned[0]!) as { level: number }).level, 40);

  const dir = path.join(scratch, 'vm', 'vm-3');
  await mkdir(dir, { recursive: true });
  const spec = { vmId: 'vm-3', dir, vcpus: 1, memoryMiB: 64, disks: [] } as unknown as LaunchSpec;
  const c = await confiner.prepare(spec, '/usr/bin/qemu-system-x86_64', ['-S']);
  assert.equal(c.command, '/usr/bin/qemu-system-x86_64');
  assert.deepEqual(c.args, ['-S']);
  assert.deepEqual(c.env, {});
  assert.equal(c.uid, null);
  assert.equal(c.cgroup, null);
  lines.length = 0;
  await confiner.prepare(spec, '/usr/bin/qemu-system-x86_64', ['-S']);
  assert.equal(lines.length, 0, 'said once, at start, not per VM');
});

test('programs are resolved to absolute paths (QEMU starts with no PATH)', () => {
  assert.equal(resolveProgram('sh', '/nonexistent:/bin'), '/bin/sh');
  assert.equal(resolveProgram('no-such-program-here', '/bin'), null);
});
