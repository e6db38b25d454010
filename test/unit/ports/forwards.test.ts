/**
 * Port forwards' rules (host/ports/forwards.ts) with real listeners and fake
 * VMs and streams: who may listen where, what is recorded, and that a forward
 * ends with its client's connection and with its VM.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { EventEmitter } from 'node:events';
import { runAs, type Acting } from '../../../host/auth/actor.js';
import type { AppendEvent } from '../../../host/events/log.js';
import { createPortForwards } from '../../../host/ports/forwards.js';
import type { PortStreams } from '../../../host/ports/streams.js';
import type { VmRecord } from '../../../protocol/rpc.js';
import { MvirtError } from '../../../protocol/errors.js';
import { testLogger } from '../../../harness/daemon.js';

const vm = (id: string, state: VmRecord['state'] = 'ready') =>
  ({ id, name: `name-${id}`, state }) as VmRecord;

function fixture() {
  const vms = new Map<string, VmRecord>([
    ['vm-a', vm('vm-a')],
    ['vm-b', vm('vm-b')],
  ]);
  const states = new EventEmitter();
  const events: AppendEvent[] = [];
  const opened: Socket[] = [];
  const f = createPortForwards({
    streams: {
      open: (_vm: string, _port: number, sock: Socket) => void opened.push(sock),
    } as unknown as PortStreams,
    vms: {
      get: (ref) => {
        const v = vms.get(ref);
        if (!v) throw new MvirtError('VM_NOT_FOUND', ref);
        return v;
      },
      onStateChange: (fn) => (states.on('state', fn), () => states.off('state', fn)),
    },
    ownerOfVm: (id) => (id === 'vm-a' ? 'team-a' : null),
    events: { append: (e) => void events.push(e) },
    bus: { publish: async () => undefined },
    prefix: 'mvirt',
    hasSubscriber: () => false,
    guestReachable: (ip) => ip.startsWith('10.213.'),
    log: testLogger(),
  });
  return { f, vms, states, events, opened };
}

const as = (role: Acting['access']['role'], scope: string | null = null): Acting => ({
  actor: { kind: 'user', user: `u-${role}`, clientId: `c-${role}` },
  access: { role, scope },
});

const code = async (p: Promise<unknown> | (() => unknown)): Promise<string> => {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'ok';
  } catch (err) {
    return (err as MvirtError).code;
  }
};

test('who may listen where', async () => {
  const { f } = fixture();
  const op = as('operator');
  assert.equal(
    await code(runAs(op, () => f.forward({ vm: 'vm-a', guestPort: 80, hostAddress: '192.0.2.7' }))),
    'FORBIDDEN',
    'an operator may not listen beyond loopback',
  );
  for (const hostAddress of ['0.0.0.0', '::', '10.213.0.1'])
    assert.equal(
      await code(runAs(as('admin'), () => f.forward({ vm: 'vm-a', guestPort: 80, hostAddress }))),
      'PORT_ADDRESS_REFUSED',
      `${hostAddress}: guests reach it`,
    );
  assert.equal(
    await code(runAs(op, () => f.forward({ vm: 'vm-a', guestPort: 80, hostAddress: 'host' }))),
    'INVALID_PARAMS',
  );
  const rec = await runAs(op, () => f.forward({ vm: 'vm-a', guestPort: 80 }));
  assert.equal(rec.address, '127.0.0.1');
  assert.ok(rec.port > 0);
  assert.equal(rec.actor, 'user:u-operator');
  assert.equal(rec.clientId, 'c-operator');
  assert.equal(
    await code(runAs(op, () => f.forward({ vm: 'vm-a', guestPort: 80, hostPort: rec.port }))),
    'PORT_BIND_FAILED',
    'the port is taken',
  );
  f.closeAll();
});

test('connections go to the streams; a forward ends with its client and with its VM', async () => {
  const { f, vms, states, events, opened } = fixture();
  const a = await runAs(as('operator'), () => f.forward({ vm: 'vm-a', guestPort: 80 }));
  const b = await runAs(as('admin'), () => f.forward({ vm: 'vm-b', guestPort: 81 }));
  assert.match(
    events[0]!.message,
    /^port forward pf-[0-9a-f]{12}: 127\.0\.0\.1:\d+ → name-vm-a:80 opened$/,
  );
  assert.equal(events[0]!.level, 'audit');
  const s = connect({ host: '127.0.0.1', port: a.port });
  await once(s, 'connect');
  while (opened.length === 0) await new Promise((r) => setImmediate(r));
  assert.equal(f.list().find((x) => x.id === a.id)!.connections, 1);
  // Its client disconnects: the forward closes, its connection with it.
  const gone = once(s, 'close');
  f.clientGone('c-operator');
  await gone;
  assert.deepEqual(
    f.list().map((x) => x.id),
    [b.id],
  );
  const refused = connect({ host: '127.0.0.1', port: a.port });
  await once(refused, 'error');
  // The other VM stops: its forward closes.
  vms.set('vm-b', vm('vm-b', 'stopped'));
  states.emit('state', vms.get('vm-b'));
  assert.deepEqual(f.list(), []);
  assert.match(events.at(-1)!.message, /closed \(VM name-vm-b is stopped\)$/);
});

test('scoped callers see and close only forwards of their VMs', async () => {
  const { f } = fixture();
  const a = await runAs(as('admin'), () => f.forward({ vm: 'vm-a', guestPort: 80 }));
  const b = await runAs(as('admin'), () => f.forward({ vm: 'vm-b', guestPort: 80 }));
  const scoped = as('operator', 'team-a');
  assert.deepEqual(
    runAs(scoped, () => f.list()).map((x) => x.id),
    [a.id],
  );
  assert.equal(await code(() => runAs(scoped, () => f.close(b.id))), 'PORT_FORWARD_NOT_FOUND');
  assert.equal(runAs(scoped, () => f.close(a.id)).id, a.id);
  assert.equal(await code(() => runAs(scoped, () => f.close(a.id))), 'PORT_FORWARD_NOT_FOUND');
  f.closeAll();
});

test('a VM without its agent ready is refused', async () => {
  const { f, vms } = fixture();
  vms.set('vm-a', vm('vm-a', 'starting'));
  assert.equal(
    await code(runAs(as('admin'), () => f.forward({ vm: 'vm-a', guestPort: 80 }))),
    'VM_BAD_STATE',
  );
  assert.equal(
    await code(runAs(as('admin'), () => f.forward({ vm: 'nope', guestPort: 80 }))),
    'VM_NOT_FOUND',
  );
});
