/**
 * Dry runs of the seven volume changes against real parts (qemu-img, a real
 * SQLite file, real files): each plan names the qemu-img argv, the files and
 * the changes the real call then makes, and a dry run leaves the database
 * file and its WAL byte for byte, the data folder's listing (names, sizes,
 * mtimes), this process's children and the published messages as they were.
 * A dry run the real call would refuse is refused with the same error.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, realpathSync } from 'node:fs';
import { mkdir, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { volumePlanners } from '../../../host/api/handlers/volume.js';
import { silentLogger } from '../../../host/log.js';
import { createStore, type Store } from '../../../host/store/index.js';
import type { createVolumeAttach } from '../../../host/volumes/attach.js';
import { createVolumeFiles } from '../../../host/volumes/files.js';
import { MIB, type VolumeManager } from '../../../host/volumes/manager.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import type { ErrorCode } from '../../../protocol/errors.js';
import { DryRunPlan } from '../../../protocol/plan.js';
import { snapshot } from '../../support/dry-run.js';
import { addStoreVm, refused, volumeRig, fakeVolumeVms } from '../../support/volumes.js';

const log = silentLogger();
let dir: string;
let volDir: string;
let importDir: string;
let dbFile: string;
let store: Store;
let volumes: VolumeManager;
let attach: ReturnType<typeof createVolumeAttach>;
const published: { topic: string; payload: string }[] = [];
const running = new Set<string>();
const liveCalls: string[] = [];

const vms = fakeVolumeVms({ volDir: () => volDir, running, liveCalls });

before(async () => {
  dir = await makeTempDir('mvirt-dry-run-');
  volDir = path.join(dir, 'volumes');
  importDir = path.join(dir, 'import');
  await mkdir(importDir);
  dbFile = path.join(dir, 'mvirt.db');
  store = createStore(dbFile, log);
  await createVolumeFiles(volDir).init();
  ({ volumes, attach } = volumeRig({
    store,
    volDir,
    log,
    published,
    importDir,
    vmActive: (id) => running.has(id),
    vms,
  }));
});
after(async () => {
  store.close();
  await removeDir(dir);
});

/** The database, the data folder, the processes (test/support/dry-run.ts) and what was published. */
const world = () => ({ ...snapshot(dir), published: published.length });

/** Runs fn (a dry run, or a refusal) and asserts it changed nothing. */
async function unchanged<T>(fn: () => Promise<T>): Promise<T> {
  const before = world();
  const out = await fn();
  const after = world();
  assert.deepEqual(after.db, before.db, 'the database and its WAL are byte for byte the same');
  assert.deepEqual(after.files, before.files, 'the data folder is the same');
  assert.deepEqual(after.procs, before.procs, 'no process left behind');
  assert.equal(after.published, before.published, 'nothing published');
  return out;
}

/** A dry run: a valid plan, nothing changed. */
const dry = (p: () => Promise<DryRunPlan>): Promise<DryRunPlan> =>
  unchanged(async () => DryRunPlan.parse(await p()));

/** The dry run and the real call are refused alike, and neither changes anything. */
async function refusedAlike(
  plan: () => Promise<unknown>,
  real: () => Promise<unknown>,
  code: ErrorCode,
): Promise<void> {
  const d = await unchanged(() => refused(plan(), code));
  const r = await unchanged(() => refused(real(), code));
  // Figures aside: free space moves between the two calls (other tests write).
  const words = (m: string): string => m.replace(/\d+(\.\d+)?/g, 'N');
  assert.equal(words(d.message), words(r.message));
}

const volFiles = (): string[] => readdirSync(volDir).sort();
/** The real file the plan's pattern stands for. */
const realized = (pattern: string, id: string): string => pattern.replace('vol-<new>', id);
const execArgv = (p: DryRunPlan): string[][] =>
  p.commands.flatMap((c) => (c.kind === 'exec' ? [c.argv] : []));
const info = (file: string) =>
  JSON.parse(
    execFileSync('qemu-img', ['info', '--force-share', '--output=json', file], {
      encoding: 'utf8',
    }),
  ) as {
    format: string;
    'virtual-size': number;
    'backing-filename'?: string;
    snapshots?: { name: string }[];
  };

describe('volume dry runs', () => {
  test('create: the plan names qemu-img create and the file the real call makes', async () => {
    const plan = await dry(() => volumes.plan.create({ name: 'data1', sizeMiB: 8 }));
    assert.equal(plan.method, 'volume.create');
    assert.deepEqual(plan.steps, ['make file', 'insert row']);
    assert.equal(plan.admission[0], 'name data1 is free');
    assert.match(plan.admission[1]!, /^capacity: 8 MiB needed, [\d.]+ GiB free/);
    assert.deepEqual(plan.files, { create: ['volumes/vol-<new>.raw'], remove: [] });
    assert.deepEqual(plan.changes, ['volume data1: created (raw, 8 MiB)']);
    const file = path.join(volDir, 'vol-<new>.raw');
    assert.deepEqual(plan.commands, [
      { kind: 'exec', argv: ['qemu-img', 'create', '-q', '-f', 'raw', file, String(8 * MIB)] },
    ]);

    const was = volFiles();
    const v = await volumes.create({ name: 'data1', sizeMiB: 8 });
    const made = volFiles().filter((f) => !was.includes(f));
    assert.deepEqual(made, [path.basename(realized(plan.files.create[0]!, v.id))]);
    const i = info(realized(file, v.id));
    assert.equal(i.format, 'raw');
    assert.equal(i['virtual-size'], 8 * MIB);
  });

  test('create by import: qemu-img convert from the probed format', async () => {
    const src = path.join(importDir, 'disk.img');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '2M']);
    const p = { name: 'imp', importFrom: 'disk.img', format: 'raw' as const };
    const plan = await dry(() => volumes.plan.create(p));
    assert.deepEqual(plan.changes, ['volume imp: imported from disk.img (raw, 2 MiB)']);
    assert.match(plan.admission.join('\n'), /import disk\.img: .*qcow2, no backing file/);
    const [argv] = execArgv(plan);
    const target = path.join(volDir, 'vol-<new>.raw');
    const from = path.join(realpathSync(importDir), 'disk.img');
    assert.deepEqual(argv, ['qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'raw', from, target]);
    const v = await volumes.create(p);
    assert.equal(info(realized(target, v.id)).format, 'raw');
    assert.equal(v.sizeBytes, 2 * MIB);

    // A backing file is refused by both, before anything is made.
    const bad = path.join(importDir, 'layered.img');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', src, '-F', 'qcow2', bad]);
    const q = { name: 'imp2', importFrom: 'layered.img' };
    await refusedAlike(
      () => volumes.plan.create(q),
      () => volumes.create(q),
      'IMPORT_REFUSED',
    );
  });

  test('clone: an overlay names its template relatively; a full copy converts', async () => {
    const overlay = await dry(() => volumes.plan.clone({ volume: 'data1', name: 'c1' }));
    const src = store.volumes.find('data1')!;
    const file = path.join(volDir, 'vol-<new>.qcow2');
    assert.deepEqual(overlay.steps, ['make file', 'insert row']);
    // Written in-process (qcow2-overlay.ts): no process to show.
    assert.deepEqual(execArgv(overlay), []);
    assert.deepEqual(overlay.files.create, ['volumes/vol-<new>.qcow2']);
    assert.deepEqual(overlay.changes, ['volume c1: cloned from data1 (overlay, qcow2, 8 MiB)']);
    const c1 = await volumes.clone({ volume: 'data1', name: 'c1' });
    assert.equal(info(realized(file, c1.id))['backing-filename'], `${src.id}.raw`);

    const full = await dry(() => volumes.plan.clone({ volume: 'data1', name: 'c2', mode: 'full' }));
    const copy = path.join(volDir, 'vol-<new>.raw');
    assert.deepEqual(execArgv(full), [
      [
        'qemu-img',
        'convert',
        '-q',
        '-f',
        'raw',
        '-O',
        'raw',
        path.join(volDir, `${src.id}.raw`),
        copy,
      ],
    ]);
    assert.deepEqual(full.changes, ['volume c2: cloned from data1 (full, raw, 8 MiB)']);
    const c2 = await volumes.clone({ volume: 'data1', name: 'c2', mode: 'full' });
    assert.equal(info(realized(copy, c2.id))['backing-filename'], undefined);
  });

  test('resize: qemu-img resize to the size the real call sets; same size plans nothing', async () => {
    const v = await volumes.create({ name: 'grow', sizeMiB: 8 });
    const file = path.join(volDir, `${v.id}.raw`);
    const plan = await dry(() => volumes.plan.resize('grow', 16));
    assert.deepEqual(plan.steps, ['resize file', 'update row']);
    assert.deepEqual(execArgv(plan), [
      ['qemu-img', 'resize', '-q', '-f', 'raw', file, String(16 * MIB)],
    ]);
    assert.deepEqual(plan.changes, ['volume grow: resized 8 → 16 MiB']);
    assert.deepEqual(plan.files, { create: [], remove: [] });
    await volumes.resize('grow', 16);
    assert.equal(info(file)['virtual-size'], 16 * MIB);
    assert.equal(store.volumes.get(v.id)!.sizeBytes, 16 * MIB);

    const same = await dry(() => volumes.plan.resize('grow', 16));
    assert.deepEqual([same.steps, same.commands, same.changes], [[], [], []]);
  });

  test('delete: the row and the file the real call removes', async () => {
    const v = await volumes.create({ name: 'gone', sizeMiB: 1 });
    const plan = await dry(() => volumes.plan.delete('gone'));
    assert.deepEqual(plan.steps, ['delete row', 'remove file']);
    assert.deepEqual(plan.files, { create: [], remove: [`volumes/${v.id}.raw`] });
    assert.deepEqual(plan.changes, ['volume gone: deleted']);
    assert.deepEqual(plan.commands, []);
    await volumes.delete('gone');
    assert.ok(!existsSync(path.join(dir, plan.files.remove[0]!)));
    assert.equal(store.volumes.find('gone'), undefined);
  });

  test('snapshot, restore, deleteSnapshot: qemu-img snapshot -c, -a, -d', async () => {
    const v = await volumes.create({ name: 'snap', sizeMiB: 1, format: 'qcow2' });
    const file = path.join(volDir, `${v.id}.qcow2`);
    const opts = `driver=qcow2,file.driver=file,file.filename=${file}`;
    const names = (): string[] => (info(file).snapshots ?? []).map((s) => s.name);

    const take = await dry(() => volumes.plan.snapshot({ volume: 'snap', name: 's1' }));
    assert.deepEqual(take.steps, ['take snapshot', 'update row']);
    assert.deepEqual(execArgv(take), [
      ['qemu-img', 'snapshot', '-q', '--image-opts', '-c', 's1', opts],
    ]);
    assert.deepEqual(take.changes, ['volume snap: snapshot s1 taken']);
    assert.ok(take.admission.includes('no running VM has volume snap open: changed with qemu-img'));
    assert.deepEqual(names(), []);
    await volumes.snapshot({ volume: 'snap', name: 's1' });
    assert.deepEqual(names(), ['s1']);

    const restore = await dry(() => volumes.plan.restore({ volume: 'snap', snapshot: 's1' }));
    assert.deepEqual(execArgv(restore), [
      ['qemu-img', 'snapshot', '-q', '--image-opts', '-a', 's1', opts],
    ]);
    assert.deepEqual(restore.changes, ['volume snap: restored to snapshot s1']);
    await volumes.restore({ volume: 'snap', snapshot: 's1' });

    const drop = await dry(() => volumes.plan.deleteSnapshot({ volume: 'snap', snapshot: 's1' }));
    assert.deepEqual(execArgv(drop), [
      ['qemu-img', 'snapshot', '-q', '--image-opts', '-d', 's1', opts],
    ]);
    assert.deepEqual(drop.changes, ['volume snap: snapshot s1 deleted']);
    assert.deepEqual(names(), ['s1']);
    await volumes.deleteSnapshot({ volume: 'snap', snapshot: 's1' });
    assert.deepEqual(names(), []);
  });

  test('live: attached to a running QEMU VM, the plan is QMP and the VM is not called', async () => {
    addStoreVm(store, 'vm-l');
    const v = await volumes.create({ name: 'live', sizeMiB: 1, format: 'qcow2' });
    store.db.transaction(() =>
      attach.attach('vm-l', 'vm-l', attach.resolve([{ volume: 'live' }])),
    )();
    running.add('vm-l');
    try {
      const plan = await dry(() => volumes.plan.snapshot({ volume: 'live', name: 'hot' }));
      assert.deepEqual(plan.steps, ['take snapshot live in VM vm-l', 'update row']);
      assert.deepEqual(plan.commands, [
        { kind: 'qmp', execute: 'query-block' },
        {
          kind: 'qmp',
          execute: 'blockdev-snapshot-internal-sync',
          arguments: { device: `<node of ${v.id}.qcow2, from query-block>`, name: 'hot' },
        },
      ]);
      assert.deepEqual(plan.changes, ['volume live: snapshot hot taken live in VM vm-l']);
      assert.deepEqual(liveCalls, [], 'the VM was not asked');
      await volumes.snapshot({ volume: 'live', name: 'hot' });
      assert.deepEqual(liveCalls, [`vm-l create ${v.id}.qcow2 hot`]);
      // Restore is refused while the VM runs, by both.
      const r = { volume: 'live', snapshot: 'hot' };
      await refusedAlike(
        () => volumes.plan.restore(r),
        () => volumes.restore(r),
        'VOLUME_IN_USE',
      );
      // Resizing an attached running volume too.
      await refusedAlike(
        () => volumes.plan.resize('live', 2),
        () => volumes.resize('live', 2),
        'VOLUME_IN_USE',
      );
    } finally {
      running.delete('vm-l');
    }
  });

  test('refusals: the same error as the real call, nothing changed', async () => {
    const cases: [() => Promise<unknown>, () => Promise<unknown>, ErrorCode][] = [
      // attached: no delete
      [() => volumes.plan.delete('live'), () => volumes.delete('live'), 'VOLUME_IN_USE'],
      // a template of a clone: no delete
      [() => volumes.plan.delete('data1'), () => volumes.delete('data1'), 'VOLUME_IN_USE'],
      [
        () => volumes.plan.create({ name: 'huge', sizeMiB: 64 * 1024 * 1024 }),
        () => volumes.create({ name: 'huge', sizeMiB: 64 * 1024 * 1024 }),
        'STORAGE_FULL',
      ],
      [
        () => volumes.plan.create({ name: 'data1', sizeMiB: 1 }),
        () => volumes.create({ name: 'data1', sizeMiB: 1 }),
        'VOLUME_EXISTS',
      ],
      [
        () => volumes.plan.clone({ volume: 'data1', name: 'grow' }),
        () => volumes.clone({ volume: 'data1', name: 'grow' }),
        'VOLUME_EXISTS',
      ],
      [() => volumes.plan.resize('grow', 4), () => volumes.resize('grow', 4), 'INVALID_PARAMS'],
      [() => volumes.plan.delete('nope'), () => volumes.delete('nope'), 'VOLUME_NOT_FOUND'],
      [
        () => volumes.plan.snapshot({ volume: 'data1', name: 'x' }),
        () => volumes.snapshot({ volume: 'data1', name: 'x' }),
        'SNAPSHOT_UNSUPPORTED',
      ],
      [
        () => volumes.plan.snapshot({ volume: 'live', name: 'hot' }),
        () => volumes.snapshot({ volume: 'live', name: 'hot' }),
        'SNAPSHOT_EXISTS',
      ],
      [
        () => volumes.plan.restore({ volume: 'snap', snapshot: 'never' }),
        () => volumes.restore({ volume: 'snap', snapshot: 'never' }),
        'SNAPSHOT_NOT_FOUND',
      ],
      [
        () => volumes.plan.deleteSnapshot({ volume: 'snap', snapshot: 'never' }),
        () => volumes.deleteSnapshot({ volume: 'snap', snapshot: 'never' }),
        'SNAPSHOT_NOT_FOUND',
      ],
    ];
    for (const [plan, real, code] of cases) await refusedAlike(plan, real, code);
  });

  test('a planted symlink is refused by dry runs as by the real calls', async () => {
    const target = path.join(dir, 'secret');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', target, '1M']);
    const v = await volumes.create({ name: 'victim', sizeMiB: 1 });
    const file = path.join(volDir, `${v.id}.raw`);
    await rm(file);
    await symlink(target, file);
    await refusedAlike(
      () => volumes.plan.resize('victim', 4),
      () => volumes.resize('victim', 4),
      'STORAGE_UNSAFE',
    );
    await refusedAlike(
      () => volumes.plan.delete('victim'),
      () => volumes.delete('victim'),
      'STORAGE_UNSAFE',
    );
    const c = { volume: 'victim', name: 'vc', mode: 'full' as const };
    await refusedAlike(
      () => volumes.plan.clone(c),
      () => volumes.clone(c),
      'STORAGE_UNSAFE',
    );
    assert.ok(lstatSync(file).isSymbolicLink(), 'left as it was');
  });

  test('a dry run waits its turn in the queue: it sees the create sent before it', async () => {
    const made = volumes.create({ name: 'queued', sizeMiB: 1 });
    const plan = volumes.plan.create({ name: 'queued', sizeMiB: 1 });
    await made;
    await refused(plan, 'VOLUME_EXISTS');
  });

  test('the API planners answer with the manager’s plans', async () => {
    const planners = volumePlanners({ volumes });
    const ctx = { method: 'volume.resize' as const, encoding: 'json' as const };
    const plan = await dry(async () =>
      planners['volume.resize']({ volume: 'grow', sizeMiB: 32, dryRun: true }, ctx),
    );
    assert.deepEqual(plan.changes, ['volume grow: resized 16 → 32 MiB']);
    assert.equal(store.volumes.find('grow')!.sizeBytes, 16 * MIB);
  });
});
