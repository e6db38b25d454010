/**
 * Disk snapshots against real parts: qemu-img and qemu-io on real qcow2 files
 * in a temp folder, a real SQLite file. Snapshot, overwrite, restore brings
 * the snapshotted bytes back, list, delete; a VM that runs (a stand-in for
 * the VM manager) takes the snapshot live through it; refusals with nothing
 * changed: raw volume, duplicate name, hostile names, unknown snapshot,
 * restore while attached to a running VM, a template of clones.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createStore, type Store } from '../../../host/store/index.js';
import { silentLogger } from '../../../host/log.js';
import { createVolumeFiles } from '../../../host/volumes/files.js';
import type { createVolumeAttach } from '../../../host/volumes/attach.js';
import type { VolumeManager } from '../../../host/volumes/manager.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { addStoreVm, refused, volumeRig, fakeVolumeVms } from '../../support/volumes.js';
import { PARAMS } from '../../../protocol/rpc.js';

const log = silentLogger();
let dir: string;
let volDir: string;
let store: Store;
let volumes: VolumeManager;
let attach: ReturnType<typeof createVolumeAttach>;
/** VMs whose hypervisor "runs", the locks taken and the live calls made. */
const running = new Set<string>();
const locked: string[][] = [];
const liveCalls: string[] = [];

const vms = fakeVolumeVms({ volDir: () => volDir, running, liveCalls, locked });

before(async () => {
  dir = await makeTempDir('mvirt-snapshots-');
  volDir = path.join(dir, 'volumes');
  store = createStore(path.join(dir, 'mvirt.db'), log);
  await createVolumeFiles(volDir).init();
  ({ volumes, attach } = volumeRig({
    store,
    volDir,
    log,
    vmActive: (id) => running.has(id),
    vms,
  }));
});
after(async () => {
  store.close();
  await removeDir(dir);
});

const fileOf = (id: string, fmt = 'qcow2'): string => path.join(volDir, `${id}.${fmt}`);
const write = (id: string, byte: string): void => {
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${byte} 0 64k`, fileOf(id)]);
};
/** Whether the volume's first 64 KiB are all `byte` (qemu-io read -P fails otherwise). */
const holds = (id: string, byte: string): boolean => {
  try {
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', `read -P ${byte} 0 64k`, fileOf(id)], {
      stdio: 'pipe',
    });
    return true;
  } catch {
    return false;
  }
};
const audits = (id: string): string[] =>
  store.events
    .query({ objectId: id })
    .filter((e) => e.level === 'audit')
    .map((e) => e.message);
/** What a refusal must leave as it was: the files, the rows, the snapshots in the file. */
const state = (id: string): string =>
  JSON.stringify({
    files: readdirSync(volDir).sort(),
    rows: store.volumes.list(),
    snaps: execFileSync('qemu-img', ['info', '--force-share', '--output=json', fileOf(id)], {
      encoding: 'utf8',
    }).replace(/"actual-size": \d+/, ''),
    events: store.events.query({ objectId: id }).length,
  });

const addVm = (id: string): void => addStoreVm(store, id);

describe('disk snapshots', () => {
  test('snapshot, overwrite, restore brings the snapshotted data back; list; delete', async () => {
    const v = await volumes.create({ name: 'snap-a', sizeMiB: 4, format: 'qcow2' });
    write(v.id, '0x61');
    const s1 = await volumes.snapshot({ volume: 'snap-a', name: 'first' });
    assert.equal(s1.name, 'first');
    assert.equal(s1.vmStateBytes, 0, 'disk-only');
    assert.ok(Math.abs(Date.parse(s1.createdAt) - Date.now()) < 60_000, s1.createdAt);
    write(v.id, '0x62');
    await volumes.snapshot({ volume: v.id, name: 'second' });
    write(v.id, '0x63');
    assert.deepEqual(
      (await volumes.snapshots('snap-a')).map((s) => s.name),
      ['first', 'second'],
    );

    const r = await volumes.restore({ volume: 'snap-a', snapshot: 'first' });
    assert.equal(r.state, 'available');
    assert.equal(r.sizeBytes, 4 * 1024 * 1024);
    assert.ok(holds(v.id, '0x61'), 'the first snapshot’s bytes are back');
    await volumes.restore({ volume: 'snap-a', snapshot: 'second' });
    assert.ok(holds(v.id, '0x62'));

    assert.deepEqual(await volumes.deleteSnapshot({ volume: 'snap-a', snapshot: 'first' }), {});
    assert.deepEqual(
      (await volumes.snapshots('snap-a')).map((s) => s.name),
      ['second'],
    );
    assert.ok(holds(v.id, '0x62'), 'deleting a snapshot leaves the data alone');
    // Each change is an audit event linked to the volume; no VM ran, no lock held.
    const msgs = audits(v.id);
    for (const m of [
      'snap-a: snapshot first taken',
      'snap-a: snapshot second taken',
      'snap-a: restored to snapshot first',
      'snap-a: restored to snapshot second',
      'snap-a: snapshot first deleted',
    ])
      assert.ok(msgs.includes(m), `${m} in ${JSON.stringify(msgs)}`);
    assert.ok(locked.every((ids) => ids.length === 0));
    assert.equal(liveCalls.length, 0);
  });

  test('refusals change nothing: raw, duplicate, hostile names, unknown snapshot', async () => {
    const raw = await volumes.create({ name: 'snap-raw', sizeMiB: 1 });
    const e = await refused(
      volumes.snapshot({ volume: 'snap-raw', name: 's' }),
      'SNAPSHOT_UNSUPPORTED',
    );
    assert.match(e.message, /qcow2/);
    assert.deepEqual(await volumes.snapshots('snap-raw'), [], 'a raw volume has none');
    await refused(volumes.restore({ volume: raw.id, snapshot: 's' }), 'SNAPSHOT_UNSUPPORTED');

    const v = await volumes.create({ name: 'snap-b', sizeMiB: 1, format: 'qcow2' });
    await volumes.snapshot({ volume: 'snap-b', name: 'keep' });
    const before = state(v.id);
    await refused(volumes.snapshot({ volume: 'snap-b', name: 'keep' }), 'SNAPSHOT_EXISTS');
    await refused(volumes.restore({ volume: 'snap-b', snapshot: 'nope' }), 'SNAPSHOT_NOT_FOUND');
    await refused(
      volumes.deleteSnapshot({ volume: 'snap-b', snapshot: 'nope' }),
      'SNAPSHOT_NOT_FOUND',
    );
    await refused(volumes.snapshot({ volume: 'no-such', name: 'x' }), 'VOLUME_NOT_FOUND');
    assert.equal(state(v.id), before);

    // Hostile names never reach the manager: the RPC schema refuses them.
    const hostile = ['a/b', '..', 'a..b', 'a\0b', 'a\nb', '\u001b[31m', '-c', '', 'x'.repeat(65)];
    for (const name of [...hostile, '1', '42'])
      for (const m of ['volume.snapshot', 'volume.restore', 'volume.deleteSnapshot'] as const) {
        const p =
          m === 'volume.snapshot'
            ? { volume: 'snap-b', name }
            : { volume: 'snap-b', snapshot: name };
        assert.equal(PARAMS[m].safeParse(p).success, false, `${m} ${JSON.stringify(name)}`);
      }
    assert.equal(
      PARAMS['volume.snapshot'].safeParse({ volume: 'snap-b', name: 'v1.2_x-3' }).success,
      true,
    );
    assert.equal(
      PARAMS['volume.snapshot'].safeParse({ volume: 'snap-b', name: 'ok', extra: 1 }).success,
      false,
      'strict',
    );
  });

  test('attached to a running VM: snapshot and delete go live through it; restore is refused', async () => {
    addVm('vm-s');
    const v = await volumes.create({ name: 'snap-c', sizeMiB: 1, format: 'qcow2' });
    store.db.transaction(() =>
      attach.attach('vm-s', 'vm-s', attach.resolve([{ volume: 'snap-c' }])),
    )();
    write(v.id, '0x71');
    running.add('vm-s');
    const s = await volumes.snapshot({ volume: 'snap-c', name: 'live' });
    assert.equal(s.name, 'live');
    assert.deepEqual(liveCalls, [`vm-s create ${v.id}.qcow2 live`]);
    assert.deepEqual(locked.at(-1), ['vm-s'], 'under the VM’s lock');
    const ev = store.events.query({ objectId: 'vm-s' }).find((e) => /live/.test(e.message));
    assert.ok(ev, 'the audit event is linked to the VM too');
    assert.deepEqual([...ev.objects].sort(), [v.id, 'vm-s'].sort());
    assert.equal(ev.message, 'snap-c: snapshot live taken live in VM vm-s');

    write(v.id, '0x72');
    const before = state(v.id);
    const e = await refused(
      volumes.restore({ volume: 'snap-c', snapshot: 'live' }),
      'VOLUME_IN_USE',
    );
    assert.match(e.message, /running VM vm-s/);
    assert.equal(state(v.id), before);
    assert.ok(holds(v.id, '0x72'), 'nothing restored');

    // Stopped (still attached): restore works on the file.
    running.delete('vm-s');
    await volumes.restore({ volume: 'snap-c', snapshot: 'live' });
    assert.ok(holds(v.id, '0x71'));
    assert.equal(store.volumes.get(v.id)!.state, 'attached', 'the state is kept');

    running.add('vm-s');
    await volumes.deleteSnapshot({ volume: 'snap-c', snapshot: 'live' });
    assert.equal(liveCalls.at(-1), `vm-s delete ${v.id}.qcow2 live`);
    assert.deepEqual(await volumes.snapshots('snap-c'), []);
    running.delete('vm-s');
  });

  test('a template of clones: no restore; no snapshot while a clone runs', async () => {
    addVm('vm-t');
    const t = await volumes.create({ name: 'snap-tmpl', sizeMiB: 1, format: 'qcow2' });
    await volumes.snapshot({ volume: 'snap-tmpl', name: 'base' });
    const c = await volumes.clone({ volume: 'snap-tmpl', name: 'snap-clone' });
    store.db.transaction(() =>
      attach.attach('vm-t', 'vm-t', attach.resolve([{ volume: 'snap-clone' }])),
    )();
    const before = state(t.id);
    await refused(volumes.restore({ volume: 'snap-tmpl', snapshot: 'base' }), 'VOLUME_IN_USE');
    running.add('vm-t');
    const e = await refused(
      volumes.snapshot({ volume: 'snap-tmpl', name: 'more' }),
      'VOLUME_IN_USE',
    );
    assert.deepEqual((e.details as { vms: string[] }).vms, ['vm-t']);
    assert.equal(state(t.id), before);
    running.delete('vm-t');
    // A clone (an overlay) has snapshots of its own; the template is untouched.
    await volumes.snapshot({ volume: c.id, name: 'mine' });
    assert.deepEqual(
      (await volumes.snapshots('snap-tmpl')).map((s) => s.name),
      ['base'],
    );
  });
});
