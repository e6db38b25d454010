/**
 * The volume RPCs against the real mvirtd (fake hypervisor: no QEMU needed):
 * records, retained state, audit events naming the actor, system.info's
 * storage, the capacity cap, hostile names and paths refused by the schema,
 * disks linked into the VM folder at boot and gone at exit, and the attach
 * rules seen through vm.create and volume.delete.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { VolumeRecord } from '../../protocol/rpc.js';
import { rpcClient, result as ok, errorOf, type RpcClient } from '../../harness/client.js';
import { createFakeHypervisor, killFakes } from '../../harness/fake-vms.js';
import { startTestDaemon, type TestDaemon } from '../../harness/daemon.js';
import { makeTempDir, removeDir } from '../../harness/paths.js';

const hv = createFakeHypervisor();
let d: TestDaemon;
let c: RpcClient;
let importDir: string;

before(async () => {
  importDir = await makeTempDir('mvirt-import-');
  d = await startTestDaemon({
    hypervisors: [hv],
    args: ['--storage-max-gib', '1', '--volume-import-dir', importDir],
  });
  c = await rpcClient(d);
});
after(async () => {
  await c?.close();
  await d?.daemon.vms.shutdown(true).catch(() => undefined);
  await d?.stop();
  killFakes(hv);
  if (d) await removeDir(d.dataDir);
  await removeDir(importDir);
});

const code = async (p: Promise<{ ok: boolean }>): Promise<string> => {
  const r = await p;
  return r.ok ? 'ok' : errorOf(r as never).code;
};

test('create, get, list, resize, clone, delete over RPC; retained record; audit names the actor', async () => {
  const watch = await c.watch(`${d.root}/volume/+/state`, (_t, p) => p.length > 0);
  const v = ok(await c.call('volume.create', { name: 'rpc-data', sizeMiB: 8, format: 'qcow2' }));
  const retained = JSON.parse((await watch.message).toString()) as VolumeRecord;
  assert.equal(retained.id, v.id);
  assert.equal(ok(await c.call('volume.get', { volume: 'rpc-data' })).sizeBytes, 8 << 20);
  assert.ok(ok(await c.call('volume.list', {})).volumes.some((x) => x.id === v.id));
  assert.equal(
    ok(await c.call('volume.resize', { volume: v.id, sizeMiB: 16 })).sizeBytes,
    16 << 20,
  );
  const cl = ok(await c.call('volume.clone', { volume: 'rpc-data', name: 'rpc-clone' }));
  assert.equal(cl.backing, v.id);
  const ev = d.daemon.store.events.query({ objectId: v.id, level: 'audit' });
  assert.ok(ev.length >= 3);
  assert.ok(
    ev.every((e) => e.actor !== undefined && e.actor !== 'mvirtd'),
    'the caller is named',
  );

  const info = ok(await c.call('system.info'));
  assert.equal(info.storage?.maxBytes, 1024 ** 3);
  assert.equal(info.storage?.provisionedBytes, 32 << 20);
  assert.ok((info.storage?.freeBytes ?? 0) > 0);

  const gone = await c.watch(`${d.root}/volume/${cl.id}/state`, (_t, p) => p.length === 0);
  assert.equal(await code(c.call('volume.delete', { volume: 'rpc-data' })), 'VOLUME_IN_USE');
  ok(await c.call('volume.delete', { volume: 'rpc-clone' }));
  await gone.message;
  ok(await c.call('volume.delete', { volume: 'rpc-data' }));
});

test('refusals change nothing: the cap, hostile names, paths, unknown fields', async () => {
  const before = readdirSync(path.join(d.dataDir, 'volumes')).sort();
  const full = await c.call('volume.create', { name: 'too-big', sizeMiB: 2048 });
  assert.equal(errorOf(full).code, 'STORAGE_FULL');
  assert.match(errorOf(full).message, /free/);
  for (const name of ['a/b', '..', 'x..y', 'nul\u0000', 'ctl\u0007', '/etc/passwd', '']) {
    assert.equal(
      errorOf(await c.send('volume.create', { name, sizeMiB: 1 })).code,
      'INVALID_PARAMS',
      name,
    );
  }
  for (const importFrom of ['/etc/passwd', '../x', 'a/b'])
    assert.equal(
      errorOf(await c.send('volume.create', { name: 'imp', importFrom })).code,
      'INVALID_PARAMS',
    );
  assert.equal(
    errorOf(await c.send('volume.create', { name: 'p', sizeMiB: 1, path: '/tmp/x' })).code,
    'INVALID_PARAMS',
    'no path field',
  );
  assert.equal(
    await code(c.call('volume.create', { name: 'imp', importFrom: 'absent.img' })),
    'IMPORT_REFUSED',
  );
  assert.deepEqual(readdirSync(path.join(d.dataDir, 'volumes')).sort(), before);
  assert.equal(ok(await c.call('volume.list', {})).volumes.length, 0);
});

test('disks at boot: linked into the VM folder, gone at exit; one read-write user', async () => {
  const v = ok(await c.call('volume.create', { name: 'boot-disk', sizeMiB: 1 }));
  const ro = ok(await c.call('volume.create', { name: 'ro-disk', sizeMiB: 1 }));
  const vm = ok(
    await c.call('vm.create', {
      name: 'with-disks',
      disks: [{ volume: 'boot-disk' }, { volume: 'ro-disk', readOnly: true }],
    }),
  );
  assert.deepEqual(vm.disks, [
    { volume: v.id, readOnly: false, serial: v.id },
    { volume: ro.id, readOnly: true, serial: ro.id },
  ]);
  assert.equal(ok(await c.call('volume.get', { volume: 'boot-disk' })).state, 'attached');
  // ro-disk may be attached read-only again, never read-write; boot-disk not at all.
  ok(await c.call('vm.create', { name: 'ro-too', disks: [{ volume: 'ro-disk', readOnly: true }] }));
  for (const disks of [[{ volume: 'boot-disk', readOnly: true }], [{ volume: 'ro-disk' }]])
    assert.equal(await code(c.call('vm.create', { name: 'nope', disks })), 'VOLUME_IN_USE');
  assert.equal(
    await code(c.call('vm.create', { name: 'nope', disks: [{ volume: 'missing' }] })),
    'VOLUME_NOT_FOUND',
  );
  assert.equal(d.daemon.vms.resolveId('nope'), undefined);

  ok(await c.call('vm.start', { vm: 'with-disks', wait: true }));
  const dir = path.join(d.dataDir, 'vm', vm.id);
  assert.ok(existsSync(path.join(dir, `${v.id}.raw`)));
  assert.ok(existsSync(path.join(dir, `${ro.id}.raw`)));
  assert.equal(
    await code(c.call('volume.resize', { volume: 'boot-disk', sizeMiB: 2 })),
    'VOLUME_IN_USE',
  );
  ok(await c.call('vm.stop', { vm: 'with-disks' }));
  assert.ok(!existsSync(path.join(dir, `${v.id}.raw`)), 'links removed at exit');
  ok(await c.call('volume.resize', { volume: 'boot-disk', sizeMiB: 2 }));

  ok(await c.call('vm.delete', { vm: 'with-disks' }));
  assert.equal(ok(await c.call('volume.get', { volume: 'boot-disk' })).state, 'available');
  const r = ok(await c.call('volume.get', { volume: 'ro-disk' }));
  assert.equal(r.state, 'attached', 'still read-only on ro-too');
  assert.deepEqual(r.attachedTo, [{ vm: d.daemon.vms.resolveId('ro-too')!, readOnly: true }]);
  ok(await c.call('volume.delete', { volume: 'boot-disk' }));
});
