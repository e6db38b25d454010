/**
 * Roles, scopes and private replies against the real mvirtd (fake hypervisor
 * backend, real broker, real SQLite), driven with Debian's mosquitto_pub and
 * mosquitto_sub as a third-party controller would: every role against every
 * method, each topic family delivered only within a scope, client-id
 * takeover, session resumption and request/reply snooping refused, and the
 * actor named in the audit log.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { hashPassword } from '../../../host/broker/passwords.js';
import type { EventRecord, ReplyEnvelope, VmRecord, VolumeRecord } from '../../../protocol/rpc.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';

const run = promisify(execFile);
const hv = createFakeHypervisor();
let d: TestDaemon;
let port: string;
const PASSWORD = 'pw';
// Cheap scrypt parameters: these tests log in a few hundred times.
const FAST = { N: 1024, r: 8, p: 1 };
const USERS = [
  { username: 'root' }, // no role: an admin, as before roles existed
  { username: 'admin', role: 'admin' },
  { username: 'op', role: 'operator' },
  { username: 'viewer', role: 'viewer' },
  { username: 'op-a', role: 'operator', scope: 'a' },
  { username: 'op-b', role: 'operator', scope: 'b' },
  { username: 'view-a', role: 'viewer', scope: 'a' },
] as const;

before(async () => {
  const dir = await makeTempDir('mvirt-roles-');
  const file = path.join(dir, 'users.json');
  const hash = await hashPassword(PASSWORD, FAST);
  await writeFile(
    file,
    JSON.stringify({ users: USERS.map((u) => ({ ...u, passwordHash: hash })) }),
  );
  d = await startTestDaemon({ hypervisors: [hv], args: ['--users', file] });
  port = d.daemon.broker.addresses.tcp!.split(':').pop()!;
});
after(async () => {
  await d?.daemon.vms.shutdown(true).catch(() => undefined);
  await d?.stop();
  killFakes(hv);
  if (d) await removeDir(d.dataDir);
});

const replyNs = (clientId: string): string => `mvirt/_clients/${clientId}/replies`;
const auth = (user: string): string[] => ['-p', port, '-u', user, '-P', PASSWORD, '-q', '1'];

/** A mosquitto_sub that prints `topic payload` lines; `until` waits for a line. */
function sub(user: string, clientId: string, filters: string[], extra: string[] = []) {
  const child: ChildProcessWithoutNullStreams = spawn('mosquitto_sub', [
    ...auth(user),
    '-i',
    clientId,
    '-v',
    ...filters.flatMap((f) => ['-t', f]),
    ...extra,
  ]);
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => {
    buf += b.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters.splice(0)) w();
  });
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return {
    lines,
    exited,
    stderr: () => err,
    async until(pred: (line: string) => boolean, what: string): Promise<string> {
      for (;;) {
        const hit = lines.find(pred);
        if (hit !== undefined) return hit;
        const closed = await Promise.race([
          new Promise<false>((r) => waiters.push(() => r(false))),
          exited.then(() => true),
        ]);
        if (closed && !lines.some(pred))
          throw new Error(`mosquitto_sub exited before ${what}: ${err} ${lines.join('\n')}`);
      }
    },
    stop: () => child.kill(),
  };
}

async function pub(user: string, topic: string, message: string, extra: string[] = []) {
  return run('mosquitto_pub', [
    ...auth(user),
    '-i',
    `${user}-pub`,
    '-t',
    topic,
    '-m',
    message,
    ...extra,
  ]);
}

/**
 * One reply listener per user: a mosquitto_sub on its own namespace; calls
 * go out with mosquitto_pub as the same user (another client id).
 */
async function replies(user: string) {
  const clientId = `${user}-replies`;
  const s = sub(user, clientId, [`${replyNs(clientId)}/#`, `${d.root}/status`]);
  await s.until((l) => l.startsWith(`${d.root}/status `), 'the retained status (subscribed)');
  let n = 0;
  return {
    sub: s,
    async call(method: string, params?: unknown): Promise<ReplyEnvelope> {
      const id = `${user}-${++n}`;
      const replyTo = `${replyNs(clientId)}/x`;
      await pub(user, `${d.root}/rpc/${method}`, JSON.stringify({ id, replyTo, params }));
      const line = await s.until((l) => l.includes(`"id":"${id}"`), `the reply to ${id}`);
      return JSON.parse(line.slice(line.indexOf(' ') + 1)) as ReplyEnvelope;
    },
  };
}

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
  'job.run': { vm: 'nope', argv: ['true'] },
  'job.get': { jobId: 'job-000000000000' },
  'job.list': {},
  'job.cancel': { jobId: 'job-000000000000' },
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
  'events.query': {},
  'metrics.query': { from: 0 },
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
  'job.run',
  'job.cancel',
  'volume.create',
  'volume.resize',
  'volume.delete',
  'volume.clone',
  'volume.snapshot',
  'volume.restore',
  'volume.deleteSnapshot',
];
/** What docs/security.md promises each role. */
const ALLOWED: Record<string, string[]> = {
  viewer: READS,
  operator: [...READS, ...OPERATE],
  admin: Object.keys(PARAMS),
  root: Object.keys(PARAMS),
};

describe('each role against each method (mosquitto_pub → mosquitto_sub)', () => {
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
          d.daemon.vms.list().some((v: VmRecord) => v.name === 'vm-of-viewer'),
          false,
        );
        assert.equal(d.daemon.store.volumes.nameTaken('vol-of-viewer'), false);
      }
    });
  }

  test('a refusal is an audit event naming the actor', async () => {
    const events = d.daemon.store.events.query({ actor: 'user:viewer', level: 'audit' });
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
      assert.equal(d.daemon.store.volumes.get(idB)?.sizeBytes, 1024 * 1024, 'vol-b unchanged');
      assert.equal(d.daemon.vms.resolveId('thief'), undefined);
      // Its own volume it may attach; the clone carries its label.
      const vm = await a.call('vm.create', { name: 'with-disk', disks: [{ volume: 'vol-a' }] });
      assert.ok(vm.ok, JSON.stringify(vm));
      // Both objects are checked: another scope's volume onto its own VM, or
      // its own volume off another scope's VM, is refused and changes nothing.
      const plug = await a.call('vm.attachDisk', { vm: 'with-disk', volume: 'vol-b' });
      assert.equal(plug.ok ? 'ok' : plug.error.code, 'FORBIDDEN');
      const unplug = await b.call('vm.detachDisk', { vm: 'with-disk', volume: 'vol-a' });
      assert.equal(unplug.ok ? 'ok' : unplug.error.code, 'FORBIDDEN');
      assert.deepEqual(d.daemon.store.volumes.get(idB)?.attachedTo, []);
      assert.equal(d.daemon.store.volumes.find('vol-a')?.attachedTo.length, 1);
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
      assert.ok(d.daemon.vms.resolveId(vmB.id), 'scoped-b still exists');
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
    d.daemon.store.owners.set('job', 'job-aaaaaaaaaaaa', 'a');
    d.daemon.store.owners.set('job', 'job-bbbbbbbbbbbb', 'b');
    const s = sub('view-a', 'view-a-sub', [
      'mvirt/+/vm/+/state',
      'mvirt/+/vm/+/telemetry',
      'mvirt/+/job/+/output',
      `${d.root}/events`,
      '#',
      `${replyNs('view-a-sub')}/end`,
    ]);
    try {
      await s.until((l) => l.includes(vmA.id) && l.includes('/state '), "its own VM's state");
      const bus = d.daemon.broker;
      for (const [vm, job] of [
        [vmB.id, 'job-bbbbbbbbbbbb'],
        [vmA.id, 'job-aaaaaaaaaaaa'],
      ] as const) {
        await bus.publish(`${d.root}/vm/${vm}/telemetry`, JSON.stringify({ cpuPercent: 1, vm }));
        await bus.publish(`${d.root}/job/${job}/output`, JSON.stringify({ seq: 0, data: job }));
        await bus.publish(
          `${d.root}/events`,
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

  test('a viewer may not type on a console; an operator of another scope neither', async () => {
    await pub('op-a', `${d.root}/vm/${vmA.id}/console/in`, 'ls\n', ['-q', '1']); // its own: fine
    for (const user of ['view-a', 'op-b']) {
      const s = sub(user, `${user}-console`, [`${d.root}/status`]);
      await s.until((l) => l.startsWith(`${d.root}/status`), 'subscribed');
      s.stop();
      // mosquitto_pub cannot see the close (QoS 0); the broker logs nothing
      // back, so check with QoS 1: the PUBACK never comes, the socket closes.
      await assert.rejects(
        pub(user, `${d.root}/vm/${vmA.id}/console/in`, 'ls\n', ['-q', '1']),
        `${user} refused`,
      );
    }
  });
});

describe('private replies and sessions', () => {
  const connect = (user: string, clientId: string, o: mqtt.IClientOptions = {}) =>
    mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
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
    for (const filter of [`${d.root}/rpc/#`, '$SYS/#', `${replyNs('op-a-replies')}/#`]) {
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
        `${d.root}/rpc/vm.create`,
        JSON.stringify({
          id: 'forge',
          replyTo: `${replyNs('op-a-replies')}/x`,
          params: { name: 'forged' },
        }),
      );
      await pub(
        'op-b',
        `${d.root}/rpc/vm.create`,
        JSON.stringify({ id: 'legacy', replyTo: 'ctl/me/replies', params: { name: 'legacy' } }),
      );
      // op-a's own call after both: replies come in order, so nothing came before it.
      const r = await a.call('system.info');
      assert.ok(r.ok);
      assert.ok(!a.sub.lines.some((l) => l.includes('"forge"')), 'no forged reply');
      assert.equal(d.daemon.vms.resolveId('forged'), undefined);
      assert.equal(d.daemon.vms.resolveId('legacy'), undefined);
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
