/**
 * Scopes against the real mvirtd (fake hypervisor backend, real broker, real
 * SQLite), driven with Debian's mosquitto_pub and mosquitto_sub as a
 * third-party controller would: a scoped operator sees and changes only its
 * own VMs, volumes and VM snapshots, each topic family is delivered only within a scope,
 * and consoles take input only from operators of the VM's scope. Roles
 * against every method are in roles.test.ts; the daemon and the mosquitto
 * helpers in test/support/roles.ts.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import type { SnapshotRecord, VmRecord, VolumeRecord } from '../../../protocol/rpc.js';
import { replyNs, rolesFixture } from '../../support/roles.js';

const fx = rolesFixture();
const { sub, pub, replies } = fx;

describe('scopes', () => {
  let vmA: VmRecord;
  let vmB: VmRecord;
  before(async () => {
    const a = await replies('op-a');
    const b = await replies('op-b');
    try {
      const ra = await a.call('vm.create', { name: 'scoped-a' });
      const rb = await b.call('vm.create', { name: 'scoped-b' });
      assert.ok(ra.ok && rb.ok);
      vmA = ra.result as VmRecord;
      vmB = rb.result as VmRecord;
    } finally {
      a.sub.stop();
      b.sub.stop();
    }
  });

  test('a scoped operator sees and uses only its own volumes', async () => {
    const a = await replies('op-a');
    const b = await replies('op-b');
    try {
      const va = await a.call('volume.create', { name: 'vol-a', sizeMiB: 1 });
      const vb = await b.call('volume.create', { name: 'vol-b', sizeMiB: 1 });
      assert.ok(va.ok && vb.ok);
      const idB = (vb.result as VolumeRecord).id;
      const list = await a.call('volume.list', {});
      assert.ok(list.ok);
      assert.deepEqual(
        (list.result as { volumes: VolumeRecord[] }).volumes.map((v) => v.name),
        ['vol-a'],
      );
      for (const [m, params] of [
        ['volume.get', { volume: 'vol-b' }],
        ['volume.delete', { volume: idB }],
        ['volume.resize', { volume: 'vol-b', sizeMiB: 4 }],
        ['volume.clone', { volume: 'vol-b', name: 'stolen' }],
        ['vm.create', { name: 'thief', disks: [{ volume: 'vol-b' }] }],
      ] as const) {
        const r = await a.call(m, params);
        assert.equal(r.ok ? 'ok' : r.error.code, 'FORBIDDEN', m);
      }
      assert.equal(fx.d.daemon.store.volumes.get(idB)?.sizeBytes, 1024 * 1024, 'vol-b unchanged');
      assert.equal(fx.d.daemon.vms.resolveId('thief'), undefined);
      // Its own volume it may attach; the clone carries its label.
      const vm = await a.call('vm.create', { name: 'with-disk', disks: [{ volume: 'vol-a' }] });
      assert.ok(vm.ok, JSON.stringify(vm));
      // Both objects are checked: another scope's volume onto its own VM, or
      // its own volume off another scope's VM, is refused and changes nothing.
      const plug = await a.call('vm.attachDisk', { vm: 'with-disk', volume: 'vol-b' });
      assert.equal(plug.ok ? 'ok' : plug.error.code, 'FORBIDDEN');
      const unplug = await b.call('vm.detachDisk', { vm: 'with-disk', volume: 'vol-a' });
      assert.equal(unplug.ok ? 'ok' : unplug.error.code, 'FORBIDDEN');
      assert.deepEqual(fx.d.daemon.store.volumes.get(idB)?.attachedTo, []);
      assert.equal(fx.d.daemon.store.volumes.find('vol-a')?.attachedTo.length, 1);
      const cl = await a.call('volume.clone', {
        volume: 'vol-a',
        name: 'vol-a-copy',
        mode: 'full',
      });
      assert.equal(cl.ok ? 'ok' : cl.error.code, 'VOLUME_IN_USE', 'attached read-write');
    } finally {
      a.sub.stop();
      b.sub.stop();
    }
  });

  test('a scoped controller acts only on its own VMs and lists only them', async () => {
    const a = await replies('op-a');
    try {
      const got = await a.call('vm.get', { vm: 'scoped-b' });
      assert.equal(got.ok ? 'ok' : got.error.code, 'FORBIDDEN');
      const del = await a.call('vm.delete', { vm: vmB.id });
      assert.equal(del.ok ? 'ok' : del.error.code, 'FORBIDDEN');
      assert.ok(fx.d.daemon.vms.resolveId(vmB.id), 'scoped-b still exists');
      const list = await a.call('vm.list', {});
      assert.ok(list.ok);
      const names = (list.result as { vms: VmRecord[] }).vms.map((v) => v.name);
      assert.deepEqual(names.sort(), ['scoped-a', 'with-disk']);
    } finally {
      a.sub.stop();
    }
  });

  test('a scoped viewer on mvirt/+/vm/+/state, job output, telemetry and events sees only its scope', async () => {
    // Jobs of each scope, labelled as job.run would label them.
    fx.d.daemon.store.owners.set('job', 'job-aaaaaaaaaaaa', 'a');
    fx.d.daemon.store.owners.set('job', 'job-bbbbbbbbbbbb', 'b');
    const s = sub('view-a', 'view-a-sub', [
      'mvirt/+/vm/+/state',
      'mvirt/+/vm/+/telemetry',
      'mvirt/+/job/+/output',
      `${fx.d.root}/events`,
      '#',
      `${replyNs('view-a-sub')}/end`,
    ]);
    try {
      await s.until((l) => l.includes(vmA.id) && l.includes('/state '), "its own VM's state");
      const bus = fx.d.daemon.broker;
      for (const [vm, job] of [
        [vmB.id, 'job-bbbbbbbbbbbb'],
        [vmA.id, 'job-aaaaaaaaaaaa'],
      ] as const) {
        await bus.publish(`${fx.d.root}/vm/${vm}/telemetry`, JSON.stringify({ cpuPercent: 1, vm }));
        await bus.publish(`${fx.d.root}/job/${job}/output`, JSON.stringify({ seq: 0, data: job }));
        await bus.publish(
          `${fx.d.root}/events`,
          JSON.stringify({ id: 1, message: `about ${vm}`, objects: [vm] }),
        );
      }
      // The end marker comes from the same user over another connection: once
      // it arrives, everything published before it has been delivered.
      await pub('view-a', `${replyNs('view-a-sub')}/end`, 'end');
      await s.until((l) => l.endsWith(' end'), 'the end marker');
      const seen = s.lines.join('\n');
      for (const own of [`/vm/${vmA.id}/state`, `/vm/${vmA.id}/telemetry`, 'job-aaaaaaaaaaaa'])
        assert.ok(seen.includes(own), `sees ${own}`);
      assert.ok(seen.includes(`about ${vmA.id}`), 'sees its own events');
      for (const other of [vmB.id, 'job-bbbbbbbbbbbb'])
        assert.ok(!seen.includes(other), `never sees ${other}:\n${seen}`);
      assert.ok(!seen.includes('/rpc/'), 'never sees requests');
      assert.ok(!seen.includes('/agent/'), 'never sees agent traffic');
    } finally {
      s.stop();
    }
  });

  test("a scoped operator's VM snapshot is its scope's: others cannot read, delete or fork it", async () => {
    const a = await replies('op-a');
    const b = await replies('op-b');
    const v = await replies('view-a');
    try {
      const started = await a.call('vm.start', { vm: 'scoped-a', wait: true });
      assert.ok(started.ok, JSON.stringify(started));
      const taken = await a.call('vm.snapshot', { vm: 'scoped-a', name: 'snap-of-a' });
      assert.ok(taken.ok, JSON.stringify(taken));
      const snap = taken.result as SnapshotRecord;
      assert.equal(fx.d.daemon.store.owners.get('snapshot', snap.id), 'a', 'labelled a');
      // Another scope: by name or id, read, delete, fork, or snapshot the VM itself.
      for (const [m, params] of [
        ['snapshot.get', { snapshot: 'snap-of-a' }],
        ['snapshot.get', { snapshot: snap.id }],
        ['snapshot.delete', { snapshot: 'snap-of-a' }],
        ['snapshot.delete', { snapshot: snap.id, dryRun: true }],
        ['vm.create', { name: 'forked-by-b', fromSnapshot: 'snap-of-a' }],
        ['vm.create', { name: 'forked-by-b', fromSnapshot: snap.id, count: 2, dryRun: true }],
        ['vm.snapshot', { vm: 'scoped-a', name: 'stolen' }],
        ['vm.suspend', { vm: vmA.id }],
      ] as const) {
        const r = await b.call(m, params);
        assert.equal(r.ok ? 'ok' : r.error.code, 'FORBIDDEN', `${m} ${JSON.stringify(params)}`);
      }
      const listB = await b.call('snapshot.list', {});
      assert.ok(listB.ok);
      assert.deepEqual((listB.result as { snapshots: SnapshotRecord[] }).snapshots, []);
      assert.equal(fx.d.daemon.vms.resolveId('forked-by-b-1'), undefined, 'no fork was made');
      assert.equal(fx.d.daemon.store.snapshots.get(snap.id)?.state, 'ready', 'still there');
      // Its own scope: the viewer reads it, the operator may plan a fork of it.
      const got = await v.call('snapshot.get', { snapshot: 'snap-of-a' });
      assert.ok(got.ok, JSON.stringify(got));
      const listA = await v.call('snapshot.list', { vm: 'scoped-a' });
      assert.ok(listA.ok);
      assert.deepEqual(
        (listA.result as { snapshots: SnapshotRecord[] }).snapshots.map((s) => s.id),
        [snap.id],
      );
      const plan = await a.call('vm.create', {
        name: 'f',
        fromSnapshot: 'snap-of-a',
        dryRun: true,
      });
      assert.ok(plan.ok, JSON.stringify(plan));
      const del = await a.call('snapshot.delete', { snapshot: 'snap-of-a' });
      assert.ok(del.ok, JSON.stringify(del));
      assert.equal(fx.d.daemon.store.owners.get('snapshot', snap.id), null, 'label gone with it');
    } finally {
      a.sub.stop();
      b.sub.stop();
      v.sub.stop();
    }
  });

  test('a viewer may not type on a console; an operator of another scope neither', async () => {
    await pub('op-a', `${fx.d.root}/vm/${vmA.id}/console/in`, 'ls\n', ['-q', '1']); // its own: fine
    for (const user of ['view-a', 'op-b']) {
      const s = sub(user, `${user}-console`, [`${fx.d.root}/status`]);
      await s.until((l) => l.startsWith(`${fx.d.root}/status`), 'subscribed');
      s.stop();
      // mosquitto_pub cannot see the close (QoS 0); the broker logs nothing
      // back, so check with QoS 1: the PUBACK never comes, the socket closes.
      await assert.rejects(
        pub(user, `${fx.d.root}/vm/${vmA.id}/console/in`, 'ls\n', ['-q', '1']),
        `${user} refused`,
      );
    }
  });
});
