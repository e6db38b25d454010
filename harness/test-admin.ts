/**
 * The admin every test daemon and broker knows: TCP, WebSocket and HTTP
 * controllers always log in (loopback is not an identity), so test helpers
 * connect as this user, or anonymously over the unix socket. The hash uses a
 * small scrypt cost (N=1024: ~2 ms) so that logins do not slow the suite; the
 * format is the production one.
 */
import { randomBytes, scryptSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

const password = randomBytes(12).toString('base64url');
const salt = randomBytes(16);
const N = 1024;

export const TEST_ADMIN = {
  username: 'test-admin',
  password,
  passwordHash: `$scrypt$n=${N},r=8,p=1$${salt.toString('base64')}$${scryptSync(password, salt, 32, { N, r: 8, p: 1 }).toString('base64')}`,
} as const;

/** `{username, password}` for mqtt.js, HTTP Basic and the browser. */
export const adminLogin = (): { username: string; password: string } => ({
  username: TEST_ADMIN.username,
  password: TEST_ADMIN.password,
});

/** `Authorization` header value for HTTP requests as the test admin. */
export const adminBasic = (): string =>
  `Basic ${Buffer.from(`${TEST_ADMIN.username}:${TEST_ADMIN.password}`).toString('base64')}`;

/** A users file with the test admin (role admin), in `dir`; returns its path. */
export function writeAdminUsers(dir: string): string {
  const file = path.join(dir, 'users.json');
  writeFileSync(
    file,
    JSON.stringify({
      users: [
        { username: TEST_ADMIN.username, passwordHash: TEST_ADMIN.passwordHash, role: 'admin' },
      ],
    }),
    { mode: 0o600 },
  );
  return file;
}
