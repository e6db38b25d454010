/**
 * `scripts/setup.sh`'s admin credential: makes sure the installing user has
 * an admin login that mvirtd knows and the CLI finds by itself.
 *
 *     node --import tsx host/cli/setup-admin.ts USERS_FILE CREDENTIALS_FILE BROKER_URL USER
 *
 * - CREDENTIALS_FILE (mode 0600 in a 0700 folder): `{broker, username, password}`,
 *   read by the CLI (credentials.ts).
 * - USERS_FILE (mode 0600): the user with the password's scrypt hash and
 *   role admin, added or replaced; other users are kept as they are.
 * Run again, it keeps a credential that still matches its users-file entry
 * and makes a new one otherwise. Prints nothing secret.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { hashPassword, verifyPassword } from '../broker/passwords.js';
import { loadCredentials } from './credentials.js';

const [usersFile, credFile, broker, user] = process.argv.slice(2);
if (!usersFile || !credFile || !broker || !user) {
  console.error('usage: setup-admin USERS_FILE CREDENTIALS_FILE BROKER_URL USER');
  process.exit(2);
}

type Entry = { username: string; passwordHash: string; role?: string };
const users: { users: Entry[] } = existsSync(usersFile)
  ? (JSON.parse(readFileSync(usersFile, 'utf8')) as { users: Entry[] })
  : { users: [] };
const saved = await loadCredentials(credFile);
const entry = users.users.find((u) => u.username === user);
const keep =
  saved !== null &&
  saved.username === user &&
  entry !== undefined &&
  entry.role === 'admin' &&
  (await verifyPassword(saved.password, entry.passwordHash));

if (!keep) {
  const password = randomBytes(18).toString('base64url');
  const hash = await hashPassword(password);
  users.users = [
    ...users.users.filter((u) => u.username !== user),
    { username: user, passwordHash: hash, role: 'admin' },
  ];
  writeFileSync(usersFile, `${JSON.stringify(users, null, 2)}\n`, { mode: 0o600 });
  chmodSync(usersFile, 0o600);
  mkdirSync(path.dirname(credFile), { recursive: true, mode: 0o700 });
  writeFileSync(credFile, `${JSON.stringify({ broker, username: user, password }, null, 2)}\n`, {
    mode: 0o600,
  });
  chmodSync(credFile, 0o600);
  console.error(`admin credential for ${user} written to ${credFile} (only ${user} can read it)`);
} else {
  console.error(`admin credential for ${user} in ${credFile} is up to date`);
}
