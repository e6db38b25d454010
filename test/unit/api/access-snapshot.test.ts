/**
 * The scope check of calls that fork a VM snapshot: a pool.set {fromSnapshot}
 * (like a vm.create {fromSnapshot}) by a scoped controller is refused unless
 * the snapshot carries its label, whatever the pool itself.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createAccessCheck } from '../../../host/api/access.js';
import { PERMISSIONS } from '../../../host/api/routes.js';

const owners: Record<string, string> = { 'snap-aaaaaaaaaaaa': 'a', 'snap-bbbbbbbbbbbb': 'b' };
const byName: Record<string, string> = { base: 'snap-bbbbbbbbbbbb' };
const access = createAccessCheck({
  resolveVm: () => undefined,
  resolveVolume: () => undefined,
  resolveSnapshot: (ref) => (owners[ref] ? ref : byName[ref]),
  ownerOf: (kind, id) => (kind === 'snapshot' ? (owners[id] ?? null) : null),
});
const adminOfA = { role: 'admin', scope: 'a' } as const;

test('pool.set forking a snapshot of another scope is refused; of its own, or none, allowed', () => {
  const check = (params: unknown) =>
    access.check(adminOfA, 'pool.set', PERMISSIONS['pool.set'], params);
  const refused = check({ name: 'p', min: 1, fromSnapshot: 'base' });
  assert.deepEqual(refused, {
    reason: 'snapshot base is outside your scope a',
    objects: ['snap-bbbbbbbbbbbb'],
  });
  assert.equal(check({ name: 'p', min: 1, fromSnapshot: 'snap-aaaaaaaaaaaa' }), null);
  assert.equal(check({ name: 'p', min: 1, snapshot: true }), null);
  assert.equal(check({ name: 'p', min: 1, fromSnapshot: 'unknown' }), null, 'left to the handler');
  assert.equal(
    access.check({ role: 'admin', scope: null }, 'pool.set', PERMISSIONS['pool.set'], {
      name: 'p',
      min: 1,
      fromSnapshot: 'base',
    }),
    null,
    'an unscoped admin forks any snapshot',
  );
});

test('vm.create forking a snapshot of another scope is refused the same way', () => {
  const r = access.check({ role: 'operator', scope: 'a' }, 'vm.create', PERMISSIONS['vm.create'], {
    name: 'f',
    fromSnapshot: 'base',
  });
  assert.equal(r?.reason, 'snapshot base is outside your scope a');
});
