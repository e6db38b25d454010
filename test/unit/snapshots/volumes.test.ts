/**
 * VM snapshots, forks and suspend of VMs with volumes, against the real
 * mvirtd with a fake backend that can save state (harness/fake-vms.ts: its
 * VMs run the real agent core; a resume is a new boot of the guest). The
 * fake guest writes nothing to its disks, so the test writes the volume
 * files on the host, as the guest would, before and after the snapshot.
 * What the snapshot copies (raw, a qcow2 overlay naming its template) and
 * shares (a read-only disk), its manifest, record and audit event; forks
 * with their own copies in the same order (the data as at the snapshot, a
 * copy of one fork independent of the other's), owned by the caller's
 * scope, the dry run; refusals with nothing made; what a snapshot and a
 * saved VM state keep as they are.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runAs } from '../../../host/auth/actor.js';
import { SnapshotManifest } from '../../../host/snapshots/files.js';
import { createFakeHypervisor } from '../../../harness/fake-vms.js';
import type { VmRecord, VolumeRecord } from '../../../protocol/rpc.js';
import { DryRunPlan } from '../../../protocol/plan.js';
import { cleanupAll, errorOf, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

const MIB = 1024 * 1024;
const BEFORE = 'written-before-the-snapshot';
const AFTER = 'written-after-the-snapshot!';

let j: JobDaemon;
const vols: Record<string, VolumeRecord> = {};
let src: VmRecord;
let snapId: string;

const fileOf = (v: VolumeRecord): string => path.join(j.dataDir, 'volumes', `${v.id}.${v.format}`);
const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');
/** Write `text` at `offset` of a file, as a guest writes its disk. */
async function write(file: string, text: string, offset = 0): Promise<void> {
  const fh = await open(file, 'r+');
  await fh.write(Buffer.from(text), 0, text.length, offset);
  await fh.close();
}
const head = (file: string, n = BEFORE.length): string =>
  readFileSync(file).subarray(0, n).toString();
const call = async <T = unknown>(method: string, params: unknown): Promise<T> =>
  result(await j.c.call(method as never, params as never)) as T;
const refused = async (method: string, params: unknown, code: string, why?: RegExp) => {
  const e = errorOf(await j.c.send(method, params));
  assert.equal(e.code, code, `${method}: ${e.message}`);
  if (why) assert.match(e.message, why);
  return e;
};
const volumeNames = async (): Promise<string[]> =>
  (await call<{ volumes: VolumeRecord[] }>('volume.list', {})).volumes.map((v) => v.name).sort();

before(async () => {
  j = await startJobDaemon({
    hv: createFakeHypervisor({ agent: 'real', capabilities: { snapshots: true } }),
  });
  vols.data = await call('volume.create', { name: 'data', sizeMiB: 4 });
  vols.base = await call('volume.create', { name: 'base', sizeMiB: 2 });
  await write(fileOf(vols.base), 'from-the-template', 4096);
  vols.layer = await call('volume.clone', { volume: 'base', name: 'layer' });
  vols.ref = await call('volume.create', { name: 'ref', sizeMiB: 1 });
  await write(fileOf(vols.ref), 'reference-data');
  await call('vm.create', {
    name: 'src',
    disks: [{ volume: 'data' }, { volume: 'layer' }, { volume: 'ref', readOnly: true }],
  });
  src = await call('vm.start', { vm: 'src', wait: true });
  await write(fileOf(vols.data!), BEFORE);
});
after(cleanupAll);

describe('a snapshot of a VM with volumes', () => {
  test('copies what the VM may write, inside the pause; shares what it reads only', async () => {
    // The guest writes again the moment it runs on: the snapshot's copy must not see it.
    j.hv.options.onResume = (id) => (id === src.id ? write(fileOf(vols.data!), AFTER) : undefined);
    const snap = await call<{ id: string; disks: unknown[] }>('vm.snapshot', {
      vm: 'src',
      name: 'with-disks',
    }).finally(() => delete j.hv.options.onResume);
    snapId = snap.id;
    assert.equal(head(fileOf(vols.data!), AFTER.length), AFTER, 'it ran on and wrote');
    assert.deepEqual(snap.disks, [
      {
        volume: vols.data!.id,
        name: 'data',
        format: 'raw',
        readOnly: false,
        sizeBytes: 4 * MIB,
        kept: 'copy',
      },
      {
        volume: vols.layer!.id,
        name: 'layer',
        format: 'qcow2',
        readOnly: false,
        sizeBytes: 2 * MIB,
        kept: 'copy',
        template: vols.base!.id,
      },
      {
        volume: vols.ref!.id,
        name: 'ref',
        format: 'raw',
        readOnly: true,
        sizeBytes: MIB,
        kept: 'shared',
      },
    ]);
    const dir = path.join(j.dataDir, 'snapshots', snapId);
    const m = SnapshotManifest.parse(
      JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')),
    );
    assert.deepEqual(
      m.disks.map((d) => [d.position, d.volume.name, d.kept, d.kept === 'copy' ? d.file : null]),
      [
        [0, 'data', 'copy', 'disk-0.raw'],
        [1, 'layer', 'copy', 'disk-1.qcow2'],
        [2, 'ref', 'shared', null],
      ],
    );
    assert.ok(!existsSync(path.join(dir, 'disk-2.raw')), 'a read-only disk is not copied');
    const raw = path.join(dir, 'disk-0.raw');
    assert.equal(head(raw), BEFORE, 'the data as it was in the pause');
    for (const d of m.disks)
      if (d.kept === 'copy') {
        const f = path.join(dir, d.file);
        assert.equal(d.sha256, sha(f), `${d.file}'s sha256`);
        assert.equal(d.bytes, statSync(f).size);
      }
    assert.ok(
      statSync(raw).blocks * 512 < MIB,
      'holes stay holes: 4 MiB volume, a few bytes written',
    );
    // The overlay's copy reads through the same template, by its name in the volumes folder.
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', path.join(dir, 'disk-1.qcow2')], {
        encoding: 'utf8',
      }),
    ) as { 'backing-filename'?: string };
    assert.equal(info['backing-filename'], `${vols.base!.id}.raw`);

    const ev = (
      await call<{ events: { message: string; data?: Record<string, unknown> }[] }>(
        'events.query',
        {
          objectId: snapId,
          limit: 10,
        },
      )
    ).events.find((e) => /snapshot with-disks taken/.test(e.message));
    assert.ok(ev?.data, 'the audit event');
    const { pausedMs, diskMs } = ev.data as { pausedMs: number; diskMs: number };
    assert.ok(diskMs >= 0 && diskMs <= pausedMs, `copies ${diskMs} ms of a ${pausedMs} ms pause`);
    assert.match(ev.message, /the VM paused \d+ ms, \d+ ms of it copying 2 volumes \(\d+ bytes\)/);
    assert.equal(result(await j.c.call('vm.get', { vm: 'src' })).state, 'ready');
  });

  test('its dry run lists the copies it would make, inside the pause', async () => {
    const plan = DryRunPlan.parse(
      result(await j.c.send('vm.snapshot', { vm: 'src', name: 'p', dryRun: true })),
    );
    assert.ok(plan.steps.includes('copy its volumes (still paused)'));
    assert.deepEqual(
      plan.files.create.filter((f) => f.includes('disk-')),
      ['snapshots/<new id>/disk-0.raw', 'snapshots/<new id>/disk-1.qcow2'],
    );
    assert.deepEqual(
      plan.commands.map((c) => (c.kind === 'exec' ? c.argv.slice(0, 2) : [])),
      [
        ['cp', '--sparse=always'],
        ['cp', '--sparse=always'],
      ],
    );
    assert.ok(
      plan.changes.includes(
        "volume ref: kept as it is for the snapshot's forks (a read-only disk)",
      ),
    );
    assert.ok(
      !(await call<{ snapshots: { name: string }[] }>('snapshot.list', {})).snapshots.some(
        (s) => s.name === 'p',
      ),
    );
  });
});

describe('forks of it', () => {
  test('each gets its own copies in the same order, the shared disk read-only; the data as at the snapshot', async () => {
    const made = await runAs(
      {
        actor: { kind: 'user', user: 'op-a', clientId: 'test' },
        access: { role: 'operator', scope: 'a' },
      },
      () =>
        j.d.daemon.vms.createFromSnapshot({
          name: 'f',
          fromSnapshot: 'with-disks',
          count: 2,
          wait: true,
        }),
    );
    const forks = [made, ...(made.forks ?? [])];
    assert.deepEqual(
      forks.map((f) => f.state),
      ['ready', 'ready'],
    );
    const files: Record<string, string> = {};
    for (const f of forks) {
      const disks = f.disks!;
      const [a, b] = await Promise.all(
        [`${f.name}-disk1`, `${f.name}-disk2`].map((n) =>
          call<VolumeRecord>('volume.get', { volume: n }),
        ),
      );
      assert.deepEqual(disks, [
        { volume: a!.id, readOnly: false, serial: a!.id },
        { volume: b!.id, readOnly: false, serial: b!.id },
        { volume: vols.ref!.id, readOnly: true, serial: vols.ref!.id },
      ]);
      assert.deepEqual([a!.format, a!.sizeBytes, a!.backing], ['raw', 4 * MIB, null]);
      assert.deepEqual([b!.format, b!.sizeBytes, b!.backing], ['qcow2', 2 * MIB, vols.base!.id]);
      assert.equal(head(fileOf(a!)), BEFORE, `${f.name}: as at the snapshot, not the later write`);
      assert.equal(j.d.daemon.store.owners.get('volume', a!.id), 'a', "the caller's scope");
      files[f.name] = fileOf(a!);
    }
    await write(files['f-1']!, 'only-in-fork-one');
    assert.equal(head(files['f-2']!), BEFORE, "one fork's copy is not the other's");
    assert.equal(head(fileOf(vols.data!), AFTER.length), AFTER, 'the source keeps its own');
  });

  test('the dry run lists the copies and volumes it would make; nothing made', async () => {
    const before = await volumeNames();
    const plan = DryRunPlan.parse(
      result(
        await j.c.send('vm.create', {
          name: 'g',
          fromSnapshot: 'with-disks',
          count: 2,
          dryRun: true,
        }),
      ),
    );
    assert.equal(plan.commands.length, 4, 'two copies per fork');
    for (const c of plan.commands) assert.equal(c.kind === 'exec' && c.argv[0], 'cp');
    assert.deepEqual(plan.files.create, [
      'volumes/vol-<new>.raw',
      'volumes/vol-<new>.qcow2',
      'volumes/vol-<new>.raw',
      'volumes/vol-<new>.qcow2',
    ]);
    assert.ok(plan.admission.includes('name g-2-disk2 is free'));
    assert.ok(
      plan.changes.some((c) =>
        /^volume g-1-disk1: copied from snapshot with-disks's disk 1 \(raw, 4194304 bytes\), attached to VM g-1$/.test(
          c,
        ),
      ),
    );
    assert.ok(plan.changes.includes(`volume ${vols.ref!.id}: attached to VM g-2 read-only`));
    assert.deepEqual(await volumeNames(), before);
    assert.equal((await j.c.send('vm.get', { vm: 'g-1' })).ok, false);
  });

  test('refused before anything is made: a name taken, a damaged copy; a pool of it', async () => {
    await call('volume.create', { name: 'h-disk2', sizeMiB: 1 });
    const before = await volumeNames();
    await refused(
      'vm.create',
      { name: 'h', fromSnapshot: 'with-disks' },
      'VOLUME_EXISTS',
      /h-disk2/,
    );
    assert.deepEqual(await volumeNames(), before, 'not even h-disk1');
    assert.equal((await j.c.send('vm.get', { vm: 'h' })).ok, false);

    const copy = path.join(j.dataDir, 'snapshots', snapId, 'disk-0.raw');
    const one = readFileSync(copy).subarray(0, 1);
    await write(copy, 'X');
    await refused(
      'vm.create',
      { name: 'k', fromSnapshot: 'with-disks' },
      'SNAPSHOT_INVALID',
      /disk-0\.raw/,
    );
    assert.deepEqual(await volumeNames(), before);
    await write(copy, one.toString('latin1'));

    await refused(
      'pool.set',
      { name: 'p', min: 0, fromSnapshot: 'with-disks' },
      'INVALID_PARAMS',
      /with volumes/,
    );
  });
});

describe('what stays as it is', () => {
  test("a snapshot's shared disk and template: no delete, resize or read-write attach until it goes", async () => {
    await call('vm.stop', { vm: 'src' });
    await call('vm.delete', { vm: 'src' });
    await call('volume.delete', { volume: 'data' });
    for (const f of ['f-1', 'f-2']) {
      await call('vm.stop', { vm: f });
      await call('vm.delete', { vm: f });
      await call('volume.delete', { volume: `${f}-disk2` }); // clones of base
    }
    await call('volume.delete', { volume: 'layer' });
    const kept = /kept as it is by snapshot with-disks/;
    await refused('volume.delete', { volume: 'base' }, 'VOLUME_IN_USE', kept);
    await refused('volume.delete', { volume: 'ref' }, 'VOLUME_IN_USE', kept);
    await refused('volume.resize', { volume: 'ref', sizeMiB: 2 }, 'VOLUME_IN_USE', kept);
    await refused('vm.create', { name: 'w', disks: [{ volume: 'base' }] }, 'VOLUME_IN_USE', kept);
    await refused(
      'vm.create',
      { name: 'w', disks: [{ volume: 'ref' }], dryRun: true },
      'VOLUME_IN_USE',
      kept,
    );
    await call('vm.create', { name: 'reader', disks: [{ volume: 'ref', readOnly: true }] });
    await call('vm.delete', { vm: 'reader' });

    await call('snapshot.delete', { snapshot: 'with-disks' });
    assert.ok(!existsSync(path.join(j.dataDir, 'snapshots', snapId)));
    // The forks' own copies did not need it.
    assert.equal(head(fileOf(await call('volume.get', { volume: 'f-2-disk1' }))), BEFORE);
    await call('volume.resize', { volume: 'ref', sizeMiB: 2 });
    await call('volume.delete', { volume: 'base' });
  });

  test('a VM whose disks changed since it started cannot be saved', async () => {
    const vm = await call<VmRecord>('vm.create', {
      name: 'plug',
      disks: [{ volume: 'f-1-disk1' }],
    });
    await call('vm.start', { vm: 'plug', wait: true });
    // What a hot-plug records (the fake backend cannot plug a disk into a running VM).
    j.d.daemon.store.volumes.appendDisk(vm.id, { volume: vols.ref!.id, readOnly: true });
    const changed = /disks changed since it was started/;
    await refused('vm.snapshot', { vm: 'plug', name: 'x' }, 'VM_BAD_STATE', changed);
    await refused('vm.snapshot', { vm: 'plug', name: 'x', dryRun: true }, 'VM_BAD_STATE', changed);
    await refused('vm.suspend', { vm: 'plug' }, 'VM_BAD_STATE', changed);
    await refused('vm.suspend', { vm: 'plug', dryRun: true }, 'VM_BAD_STATE', changed);
    assert.equal(result(await j.c.call('vm.get', { vm: 'plug' })).state, 'ready', 'never paused');
    j.d.daemon.store.volumes.removeDisk(vm.id, vols.ref!.id);
  });

  test('a suspended VM keeps its disks: attach, detach, resize refused until it resumes', async () => {
    await call('volume.create', { name: 'spare', sizeMiB: 1 });
    const s = await call<VmRecord>('vm.suspend', { vm: 'plug' });
    assert.equal(s.state, 'suspended');
    const saved = /plug is suspended: the saved state it resumes from expects the disks it had/;
    await refused('vm.attachDisk', { vm: 'plug', volume: 'spare' }, 'VM_BAD_STATE', saved);
    await refused(
      'vm.attachDisk',
      { vm: 'plug', volume: 'spare', dryRun: true },
      'VM_BAD_STATE',
      saved,
    );
    await refused('vm.detachDisk', { vm: 'plug', volume: 'f-1-disk1' }, 'VM_BAD_STATE', saved);
    await refused(
      'vm.detachDisk',
      { vm: 'plug', volume: 'f-1-disk1', dryRun: true },
      'VM_BAD_STATE',
      saved,
    );
    await refused(
      'volume.resize',
      { volume: 'f-1-disk1', sizeMiB: 8 },
      'VOLUME_IN_USE',
      /VM plug, which is suspended/,
    );
    assert.deepEqual((await call<VmRecord>('vm.get', { vm: 'plug' })).disks?.length, 1);
    const up = await call<VmRecord>('vm.start', { vm: 'plug', wait: true });
    assert.equal(up.restore?.snapshot, 'suspend');
    await call('vm.stop', { vm: 'plug' });
    await call('vm.attachDisk', { vm: 'plug', volume: 'spare' });
    await call('volume.resize', { volume: 'f-1-disk1', sizeMiB: 8 });
  });

  test('a fork not started yet keeps its disks; its snapshot stays until it starts', async () => {
    await call('vm.start', { vm: 'plug', wait: true });
    await call('vm.snapshot', { vm: 'plug', name: 'two' });
    j.hv.options.failLaunch = true;
    const e = errorOf(await j.c.send('vm.create', { name: 'late', fromSnapshot: 'two' }));
    assert.notEqual(e.code, 'VOLUME_EXISTS', e.message);
    j.hv.options.failLaunch = false;
    const late = await call<VmRecord>('vm.get', { vm: 'late' });
    assert.deepEqual(
      late.disks?.map((d) => d.readOnly),
      [false, false],
    );
    const waiting = /late,? (which )?was made from snapshot snap-\w+ and has not started yet/;
    await refused('vm.detachDisk', { vm: 'late', volume: 'late-disk1' }, 'VM_BAD_STATE', waiting);
    await refused('volume.resize', { volume: 'late-disk1', sizeMiB: 9 }, 'VOLUME_IN_USE', waiting);
    await refused('snapshot.delete', { snapshot: 'two' }, 'SNAPSHOT_IN_USE', /late/);
    assert.equal((await call<VmRecord>('vm.start', { vm: 'late', wait: true })).state, 'ready');
    await call('snapshot.delete', { snapshot: 'two' });
  });
});

describe('forks with too little room', () => {
  test('the dry run counts every copy together; the call makes all or none, volumes too', async () => {
    const k = await startJobDaemon({
      args: ['--storage-max-gib', '1'],
      hv: createFakeHypervisor({ agent: 'real', capabilities: { snapshots: true } }),
    });
    const kc = async <T>(method: string, params: unknown): Promise<T> =>
      result(await k.c.call(method as never, params as never)) as T;
    // 400 MiB provisioned; each fork's copy 400 more: one fits under 1 GiB, two do not.
    await kc('volume.create', { name: 'big', sizeMiB: 400 });
    await kc('vm.create', { name: 'src', disks: [{ volume: 'big' }] });
    await kc('vm.start', { vm: 'src', wait: true });
    await kc('vm.snapshot', { vm: 'src', name: 's' });
    const full = (r: Awaited<ReturnType<typeof k.c.send>>) => {
      const e = errorOf(r);
      assert.equal(e.code, 'STORAGE_FULL', e.message);
    };
    full(await k.c.send('vm.create', { name: 'two', fromSnapshot: 's', count: 2, dryRun: true }));
    full(await k.c.send('vm.create', { name: 'two', fromSnapshot: 's', count: 2 }));
    const vms = (await kc<{ vms: VmRecord[] }>('vm.list', {})).vms.map((v) => v.name);
    assert.deepEqual(vms, ['src'], 'the first fork was removed again');
    const names = (await kc<{ volumes: VolumeRecord[] }>('volume.list', {})).volumes;
    assert.deepEqual(
      names.map((v) => v.name),
      ['big'],
      'and its volume',
    );
    const one = await kc<VmRecord>('vm.create', { name: 'one', fromSnapshot: 's', wait: true });
    assert.equal(one.state, 'ready');
  });
});
