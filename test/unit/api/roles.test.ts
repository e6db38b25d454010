/**
 * Roles and private replies against the real mvirtd (fake hypervisor
 * backend, real broker, real SQLite), driven with Debian's mosquitto_pub and
 * mosquitto_sub as a third-party controller would: every role against every
 * method, client-id takeover, session resumption and request/reply snooping
 * refused, and the actor named in the audit log. Scopes are in
 * role-scopes.test.ts; the daemon and the mosquitto helpers in
 * test/support/roles.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import mqtt from 'mqtt';
import { PERMISSIONS } from '../../../host/api/routes.js';
import type { EventRecord, VmRecord } from '../../../protocol/rpc.js';
import { PASSWORD, replyNs, rolesFixture } from '../../support/roles.js';

const fx = rolesFixture();
const { sub, pub, replies } = fx;

const PARAMS: Record<string, unknown> = {
  'system.info': undefined,
  'vm.create': undefined, // filled per role: a fresh name
  'vm.get': { vm: 'nope' },
  'vm.list': {},
  'vm.start': { vm: 'nope' },
  'vm.stop': { vm: 'nope' },
  'vm.kill': { vm: 'nope' },
  'vm.pause': { vm: 'nope' },
  'vm.resume': { vm: 'nope' },
  'vm.reboot': { vm: 'nope' },
  'vm.delete': { vm: 'nope' },
  'vm.attachDisk': { vm: 'nope', volume: 'nope' },
  'vm.detachDisk': { vm: 'nope', volume: 'nope' },
  'vm.blockDevices': { vm: 'nope' },
  'vm.snapshot': { vm: 'nope', name: 'snap' },
  'vm.suspend': { vm: 'nope' },
  'snapshot.get': { snapshot: 'nope' },
  'snapshot.list': {},
  'snapshot.delete': { snapshot: 'nope' },
  'job.run': { vm: 'nope', argv: ['true'] },
  'job.get': { jobId: 'job-000000000000' },
  'job.list': {},
  'job.cancel': { jobId: 'job-000000000000' },
  'job.signal': { jobId: 'job-000000000000', signal: 'SIGHUP' },
  'job.stdin': { jobId: 'job-000000000000', data: '' },
  'job.resize': { jobId: 'job-000000000000', cols: 80, rows: 24 },
  'job.logs': { jobId: 'job-000000000000' },
  'pool.set': undefined, // filled per role
  'pool.get': { name: 'nope' },
  'pool.list': {},
  'pool.delete': { name: 'nope' },
  'volume.create': undefined, // filled per role: a fresh name
  'volume.get': { volume: 'nope' },
  'volume.list': {},
  'volume.resize': { volume: 'nope', sizeMiB: 2 },
  'volume.delete': { volume: 'nope' },
  'volume.clone': { volume: 'nope', name: 'nope-2' },
  'volume.snapshot': { volume: 'nope', name: 'snap' },
  'volume.snapshots': { volume: 'nope' },
  'volume.restore': { volume: 'nope', snapshot: 'snap' },
  'volume.deleteSnapshot': { volume: 'nope', snapshot: 'snap' },
  'image.list': {},
  'image.get': { image: 'nope' },
  'image.delete': { image: 'nope' },
  // Invalid (no kernel): an admin's call is refused as RECIPE_INVALID, never builds.
  'image.build': { recipe: { name: 'nope' } },
  'image.import': { file: 'nope.tar', name: 'nope' },
  'events.query': {},
  'metrics.query': { from: 0 },
  'fs.write': { vm: 'nope', transfer: 'transfer-1', seq: 0, data: '', open: { path: '/f' } },
  'fs.read': { vm: 'nope', transfer: 'transfer-1', seq: 0, open: { path: '/f' } },
  'fs.stat': { vm: 'nope', path: '/f' },
  'fs.list': { vm: 'nope', path: '/' },
  'fs.mkdir': { vm: 'nope', path: '/d' },
  'fs.remove': { vm: 'nope', path: '/f' },
  'fs.move': { vm: 'nope', from: '/f', to: '/g' },
  'port.forward': { vm: 'nope', guestPort: 80 },
  'port.list': {},
  'port.close': { id: 'pf-000000000000' },
};
const READS = [
  'system.info',
  'vm.get',
  'vm.list',
  'job.get',
  'job.list',
  'job.logs',
  'pool.get',
  'pool.list',
  'events.query',
  'metrics.query',
  'volume.get',
  'volume.list',
  'volume.snapshots',
  'vm.blockDevices',
  'snapshot.get',
  'snapshot.list',
  'image.list',
  'image.get',
  'port.list',
];
const OPERATE = [
  'vm.create',
  'vm.start',
  'vm.stop',
  'vm.kill',
  'vm.pause',
  'vm.resume',
  'vm.reboot',
  'vm.delete',
  'vm.attachDisk',
  'vm.detachDisk',
  'vm.snapshot',
  'vm.suspend',
  'snapshot.delete',
  'job.run',
  'job.cancel',
  'job.signal',
  'job.stdin',
  'job.resize',
  // A guest's files, read or written: operators (a viewer cannot run `cat` either).
  'fs.write',
  'fs.read',
  'fs.stat',
  'fs.list',
  'fs.mkdir',
  'fs.remove',
  'fs.move',
  'volume.create',
  'volume.resize',
  'volume.delete',
  'volume.clone',
  'volume.snapshot',
  'volume.restore',
  'volume.deleteSnapshot',
  'port.forward',
  'port.close',
];
/** What docs/security.md promises each role. */
const ALLOWED: Record<string, string[]> = {
  viewer: READS,
  operator: [...READS, ...OPERATE],
  admin: Object.keys(PARAMS),
  root: Object.keys(PARAMS),
};

describe('each role against each method (mosquitto_pub → mosquitto_sub)', () => {
  test('every routed method is tried', () => {
    assert.deepEqual(Object.keys(PARAMS).sort(), Object.keys(PERMISSIONS).sort());
  });

  for (const user of ['viewer', 'operator', 'admin', 'root']) {
    test(user, async () => {
      const login = user === 'operator' ? 'op' : user;
      const r = await replies(login);
      try {
        for (const method of Object.keys(PARAMS)) {
          const params =
            method === 'vm.create'
              ? { name: `vm-of-${login}` }
              : method === 'pool.set'
                ? { name: `pool-of-${login}`, min: 0 }
                : method === 'volume.create'
                  ? { name: `vol-of-${login}`, sizeMiB: 1 }
                  : PARAMS[method];
          const reply = await r.call(method, params);
          const code = reply.ok ? 'ok' : reply.error.code;
          if (ALLOWED[user]!.includes(method))
            assert.notEqual(code, 'FORBIDDEN', `${user} may call ${method}`);
          else assert.equal(code, 'FORBIDDEN', `${user} may not call ${method}`);
        }
      } finally {
        r.sub.stop();
      }
      // A refusal changed nothing: the viewer created no VM and no volume.
      if (user === 'viewer') {
        assert.equal(
          fx.d.daemon.vms.list().some((v: VmRecord) => v.name === 'vm-of-viewer'),
          false,
        );
        assert.equal(fx.d.daemon.store.volumes.nameTaken('vol-of-viewer'), false);
      }
    });
  }

  test('a dry run needs the role of the real call: refused, recorded, nothing planned', async () => {
    const refusals = () =>
      fx.d.daemon.store.events
        .query({ actor: 'user:viewer', level: 'audit' })
        .filter((e: EventRecord) => / refused/.test(e.message)).length;
    const before = refusals();
    const r = await replies('viewer');
    try {
      for (const [method, params] of [
        ['vm.create', { name: 'dry-of-viewer', dryRun: true }],
        ['volume.create', { name: 'dry-vol-of-viewer', sizeMiB: 1, dryRun: true }],
        ['pool.set', { name: 'dry-pool-of-viewer', min: 0, dryRun: true }],
      ] as const) {
        const reply = await r.call(method, params);
        assert.equal(
          reply.ok ? 'ok' : reply.error.code,
          'FORBIDDEN',
          `viewer's dry run of ${method}`,
        );
      }
    } finally {
      r.sub.stop();
    }
    assert.equal(refusals(), before + 3, 'each refusal recorded');
  });

  test('a refusal is an audit event naming the actor', async () => {
    const events = fx.d.daemon.store.events.query({ actor: 'user:viewer', level: 'audit' });
    const refused = events.find((e: EventRecord) => e.message.startsWith('vm.create refused'));
    assert.ok(refused, 'vm.create refusal recorded');
    assert.equal(refused.actorClient, 'viewer-pub');
    assert.match(refused.message, /needs the operator role/);
  });

  test('events.query filters by actor; changes name who made them', async () => {
    const r = await replies('op');
    try {
      const reply = await r.call('events.query', { actor: 'user:op' });
      assert.ok(reply.ok);
      const events = (reply.result as { events: EventRecord[] }).events;
      assert.ok(events.length > 0);
      assert.ok(events.every((e) => e.actor === 'user:op'));
      assert.ok(
        events.some((e) => e.message.includes('vm-of-op') || e.objects.length > 0),
        'the VM op created is in its record',
      );
    } finally {
      r.sub.stop();
    }
  });
});

describe('private replies and sessions', () => {
  const connect = (user: string, clientId: string, o: mqtt.IClientOptions = {}) =>
    mqtt.connectAsync(`mqtt://127.0.0.1:${fx.port}`, {
      username: user,
      password: PASSWORD,
      clientId,
      protocolVersion: 4,
      reconnectPeriod: 0,
      ...o,
    });

  test('another user cannot take over a client id (the holder stays connected)', async () => {
    const alice = await connect('op-a', 'taken-id');
    try {
      const s = sub('op-b', 'taken-id', ['x/y']);
      assert.notEqual(await s.exited, 0);
      assert.match(s.stderr(), /identifier rejected|Connection Refused/i);
      assert.equal(alice.connected, true);
      const again = await connect('op-a', 'taken-id');
      await again.endAsync(); // the same user may, as MQTT intends
    } finally {
      await alice.endAsync(true);
    }
  });

  test("another user cannot resume someone's persistent session", async () => {
    const alice = await connect('op-a', 'alice-session', { clean: false });
    await alice.subscribeAsync('personal/inbox', { qos: 1 });
    await alice.endAsync();
    const s = sub('op-b', 'alice-session', ['x/y'], ['-c']);
    assert.notEqual(await s.exited, 0);
    const back = await connect('op-a', 'alice-session', { clean: false });
    assert.equal(back.connected, true);
    await back.endAsync();
  });

  test('no controller reads requests, another one’s replies or $SYS', async () => {
    for (const filter of [`${fx.d.root}/rpc/#`, '$SYS/#', `${replyNs('op-a-replies')}/#`]) {
      const s = sub('op-b', `snoop-${Math.random().toString(36).slice(2)}`, [filter]);
      await s.exited; // mosquitto_sub gives up once every filter is denied
      assert.match(s.stderr(), /denied/i, `${filter} refused`);
    }
    const snoop = sub('op-b', 'snooper', ['#', `${replyNs('snooper')}/end`]);
    await snoop.until(() => snoop.lines.length > 0, 'retained messages');
    const a = await replies('op-a');
    try {
      const r = await a.call('vm.list', {});
      assert.ok(r.ok);
    } finally {
      a.sub.stop();
    }
    await pub('op-b', `${replyNs('snooper')}/end`, 'end');
    await snoop.until((l) => l.endsWith(' end'), 'the end marker');
    snoop.stop();
    const seen = snoop.lines.join('\n');
    assert.ok(!seen.includes('/rpc/'), 'no request seen');
    assert.ok(!seen.includes('op-a-replies'), "no one else's reply seen");
    assert.ok(!seen.includes('$SYS'), 'no $SYS');
  });

  test('a request whose replyTo is not the caller’s own namespace is not run', async () => {
    // op-b asks for a reply into op-a's namespace (op-a is listening).
    const a = await replies('op-a');
    try {
      await pub(
        'op-b',
        `${fx.d.root}/rpc/vm.create`,
        JSON.stringify({
          id: 'forge',
          replyTo: `${replyNs('op-a-replies')}/x`,
          params: { name: 'forged' },
        }),
      );
      await pub(
        'op-b',
        `${fx.d.root}/rpc/vm.create`,
        JSON.stringify({ id: 'legacy', replyTo: 'ctl/me/replies', params: { name: 'legacy' } }),
      );
      // op-a's own call after both: replies come in order, so nothing came before it.
      const r = await a.call('system.info');
      assert.ok(r.ok);
      assert.ok(!a.sub.lines.some((l) => l.includes('"forge"')), 'no forged reply');
      assert.equal(fx.d.daemon.vms.resolveId('forged'), undefined);
      assert.equal(fx.d.daemon.vms.resolveId('legacy'), undefined);
    } finally {
      a.sub.stop();
    }
  });

  test('a controller may not publish into another’s reply namespace', async () => {
    await assert.rejects(
      pub('op-b', `${replyNs('op-a-replies')}/x`, '{"id":"x","ok":true}', ['-q', '1']),
    );
  });
});
