import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { hashPassword, parsePasswordHash, verifyPassword } from '../../../host/broker/passwords.js';
import { parseUsers } from '../../../host/broker/users.js';

test('hash format round trip; wrong passwords and malformed hashes fail', async () => {
  const h = await hashPassword('s3cret', { N: 1024, r: 8, p: 1 });
  assert.match(h, /^\$scrypt\$n=1024,r=8,p=1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$/);
  assert.equal(await verifyPassword('s3cret', h), true);
  assert.equal(await verifyPassword('s3cret ', h), false);
  assert.equal(await verifyPassword('s3cret', 'plain-text'), false);
  const other = await hashPassword('s3cret', { N: 1024, r: 8, p: 1 });
  assert.notEqual(other, h, 'salted');
});

test('hash parameters are bounded', () => {
  const salt = Buffer.alloc(16).toString('base64');
  const key = Buffer.alloc(32).toString('base64');
  assert.ok(parsePasswordHash(`$scrypt$n=16384,r=8,p=1$${salt}$${key}`));
  assert.equal(
    parsePasswordHash(`$scrypt$n=1000,r=8,p=1$${salt}$${key}`),
    null,
    'N not a power of 2',
  );
  assert.equal(parsePasswordHash(`$scrypt$n=${2 ** 24},r=8,p=1$${salt}$${key}`), null, 'N too big');
});

test('users file: validated, duplicates refused', async () => {
  const h = await hashPassword('x', { N: 1024, r: 8, p: 1 });
  assert.equal(parseUsers({ users: [{ username: 'alice', passwordHash: h }] }).get('alice'), h);
  for (const bad of [
    { users: [{ username: 'alice', passwordHash: 'x' }] },
    { users: [{ username: 'alice', password: 'x' }] },
    {
      users: [
        { username: 'a', passwordHash: h },
        { username: 'a', passwordHash: h },
      ],
    },
    [],
  ])
    assert.throws(
      () => parseUsers(bad),
      (e: unknown) => e instanceof MvirtError && e.code === 'CONFIG_INVALID',
    );
});
