/**
 * The access check (host/api/access.ts) and the broker's event filter on
 * their own, with the route table's real permissions: snapshots are objects
 * of a scope like VMs and volumes — named by id or name, a fork's snapshot
 * checked on vm.create, lists and events narrowed to the caller's scope.
 * The same against the running daemon is in role-scopes.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createAccessCheck } from '../../../host/api/access.js';
import { PERMISSIONS } from '../../../host/api/routes.js';
import type { Access, ObjectKind } from '../../../host/auth/roles.js';
import { mayReceive, type AclContext } from '../../../host/broker/acl.js';
import type { EventRecord, RpcMethod, SnapshotRecord } from '../../../protocol/rpc.js';

/** Objects by kind: name → id, and each id's owner label. */
const objects: Record<ObjectKind, Record<string, { id: string; owner: string | null }>> = {
  vm: { web: { id: 'vm-a', owner: 'a' }, db: { id: 'vm-b', owner: 'b' } },
  volume: { data: { id: 'vol-a', owner: 'a' }, other: { id: 'vol-b', owner: 'b' } },
  snapshot: {
    warm: { id: 'snap-00000000000a', owner: 'a' },
    cold: { id: 'snap-00000000000b', owner: 'b' },
    shared: { id: 'snap-0000000000ff', owner: null },
  },
  job: {},
  pool: {},
};
const resolver = (kind: ObjectKind) => (ref: string) =>
  Object.entries(objects[kind]).find(([name, o]) => name === ref || o.id === ref)?.[1].id;
const ownerOf = (kind: ObjectKind, id: string): string | null =>
  Object.values(objects[kind]).find((o) => o.id === id)?.owner ?? null;
const access = createAccessCheck({
  resolveVm: resolver('vm'),
  resolveVolume: resolver('volume'),
  resolveSnapshot: resolver('snapshot'),
  ownerOf,
});

const A: Access = { role: 'operator', scope: 'a' };
const ALL: Access = { role: 'admin', scope: null };
const check = (who: Access, method: RpcMethod, params: unknown) =>
  access.check(who, method, PERMISSIONS[method], params);

describe('snapshots in a scope', () => {
  test('snapshot.get and snapshot.delete: by id or name, only within the scope', () => {
    for (const method of ['snapshot.get', 'snapshot.delete'] as const) {
      assert.equal(check(A, method, { snapshot: 'warm' }), null, `${method} own by name`);
      assert.equal(check(A, method, { snapshot: 'snap-00000000000a' }), null, `${method} own id`);
      for (const ref of ['cold', 'snap-00000000000b', 'shared']) {
        const r = check(A, method, { snapshot: ref });
        assert.ok(r, `${method} ${ref} refused`);
        assert.equal(r.reason, `snapshot ${ref} is outside your scope a`);
        assert.deepEqual(r.objects, [resolver('snapshot')(ref)]);
      }
      // An unknown one is left to the handler (SNAPSHOT_NOT_FOUND), as for VMs and volumes.
      assert.equal(check(A, method, { snapshot: 'nope' }), null);
      assert.equal(check(ALL, method, { snapshot: 'cold' }), null, 'unscoped: everything');
    }
    assert.deepEqual(check(A, 'snapshot.delete', { snapshot: 'snap-0000000000ff' })?.objects, [
      'snap-0000000000ff',
    ]);
  });

  test('a viewer may read but not delete; vm.snapshot is checked on the VM', () => {
    const viewer: Access = { role: 'viewer', scope: 'a' };
    assert.equal(check(viewer, 'snapshot.get', { snapshot: 'warm' }), null);
    assert.match(
      check(viewer, 'snapshot.delete', { snapshot: 'warm' })?.reason ?? '',
      /needs the operator role/,
    );
    assert.match(check(viewer, 'vm.snapshot', { vm: 'web', name: 'x' })?.reason ?? '', /operator/);
    assert.match(check(viewer, 'vm.suspend', { vm: 'web' })?.reason ?? '', /operator/);
    assert.equal(check(A, 'vm.snapshot', { vm: 'web', name: 'x' }), null);
    assert.equal(
      check(A, 'vm.snapshot', { vm: 'db', name: 'x' })?.reason,
      'vm db is outside your scope a',
    );
    assert.equal(check(A, 'vm.suspend', { vm: 'vm-b' })?.reason, 'vm vm-b is outside your scope a');
  });

  test('vm.create from a snapshot: the snapshot must be in scope, like the disks', () => {
    assert.equal(check(A, 'vm.create', { name: 'f', fromSnapshot: 'warm' }), null);
    assert.equal(
      check(A, 'vm.create', { name: 'f', fromSnapshot: 'snap-00000000000a', count: 3 }),
      null,
    );
    for (const ref of ['cold', 'snap-00000000000b', 'shared']) {
      const r = check(A, 'vm.create', { name: 'f', fromSnapshot: ref });
      assert.equal(r?.reason, `snapshot ${ref} is outside your scope a`, ref);
    }
    assert.equal(
      check(A, 'vm.create', { name: 'f', fromSnapshot: 'nope' }),
      null,
      'handler says not found',
    );
    // The disks are still checked (the params schema refuses both at once later).
    assert.match(
      check(A, 'vm.create', { name: 'f', fromSnapshot: 'warm', disks: [{ volume: 'other' }] })
        ?.reason ?? '',
      /volume other is outside/,
    );
    assert.equal(check(A, 'vm.create', { name: 'f', disks: [{ volume: 'data' }] }), null);
    assert.equal(check(ALL, 'vm.create', { name: 'f', fromSnapshot: 'cold' }), null);
  });
});

describe('lists and events narrowed to the scope', () => {
  const snap = (id: string) => ({ id, name: id }) as SnapshotRecord;
  const all = {
    snapshots: [snap('snap-00000000000a'), snap('snap-00000000000b'), snap('snap-0000000000ff')],
  };

  test('snapshot.list: only its own; unscoped callers see all', () => {
    assert.deepEqual(access.filter(A, 'snapshot.list', all), {
      snapshots: [snap('snap-00000000000a')],
    });
    assert.equal(access.filter(ALL, 'snapshot.list', all), all);
  });

  test('events.query: an event naming one of its snapshots is its own', () => {
    const ev = (id: number, objects: string[]) => ({ id, objects }) as unknown as EventRecord;
    const events = [
      ev(1, ['snap-00000000000a']),
      ev(2, ['snap-00000000000b']),
      ev(3, ['snap-00000000000b', 'vm-a']),
      ev(4, ['snap-0000000000ff']),
    ];
    const r = access.filter(A, 'events.query', { events }) as { events: EventRecord[] };
    assert.deepEqual(
      r.events.map((e) => e.id),
      [1, 3],
    );
  });

  test("the broker's live events: a scoped controller receives those naming its snapshots", () => {
    const ctx: AclContext = {
      root: 'mvirt/h',
      clientsPrefix: 'mvirt/_clients/',
      ownerOf,
      clientIdentity: () => null,
    };
    const p = { role: 'controller', user: 'op-a', access: A, clientId: 'c-a' } as const;
    const gets = (objects: string[]) =>
      mayReceive(ctx, p, 'mvirt/h/events', JSON.stringify({ id: 1, message: 'm', objects }));
    assert.equal(gets(['snap-00000000000a']), true);
    assert.equal(gets(['snap-00000000000b']), false);
    assert.equal(gets(['snap-0000000000ff']), false);
    assert.equal(gets(['snap-00000000000b', 'vm-a']), true);
  });
});
