/**
 * The controllers' users file:
 *
 *     { "users": [{ "username", "passwordHash", "role"?, "scope"? }] }
 *
 * with hashes in the format of passwords.ts; `role` is `admin`, `operator` or
 * `viewer` (host/auth/roles.ts says what each may call; without one a user is
 * an admin, as every user was before roles); `scope` is an owner label the
 * user is confined to (absent: every object). Read once at start; a malformed
 * file is a CONFIG_INVALID error, never a silently open broker.
 */
import { readFileSync } from 'node:fs';
import * as z from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import { NAME_RE } from '../../protocol/topics.js';
import { formatIssues } from '../../protocol/validate.js';
import { ROLES, type Access } from '../auth/roles.js';
import { parsePasswordHash } from './passwords.js';

export const UserEntry = z.strictObject({
  username: z.string().min(1).max(128),
  passwordHash: z.string().refine((s) => parsePasswordHash(s) !== null, {
    message: 'not a $scrypt$n=…,r=…,p=…$salt$hash string (see host/broker/passwords.ts)',
  }),
  role: z.enum(ROLES).optional(),
  scope: z
    .string()
    .regex(NAME_RE, 'a scope is a label: letters, digits, . _ - (at most 64)')
    .optional(),
});
export type UserEntry = z.infer<typeof UserEntry>;

export const UsersFile = z.strictObject({ users: z.array(UserEntry).max(10_000) });

export const accessOf = (u: Pick<UserEntry, 'role' | 'scope'>): Access => ({
  role: u.role ?? 'admin',
  scope: u.scope ?? null,
});

/** name → entry; the password hashes alone are `hashesOf(users)`. */
export type Users = Map<string, UserEntry>;

export function parseUserEntries(value: unknown, source = 'users'): Users {
  const r = UsersFile.safeParse(value);
  if (!r.success) throw new MvirtError('CONFIG_INVALID', `${source}: ${formatIssues(r.error)}`);
  const users: Users = new Map();
  for (const u of r.data.users) {
    if (users.has(u.username))
      throw new MvirtError('CONFIG_INVALID', `${source}: user ${u.username} listed twice`);
    users.set(u.username, u);
  }
  return users;
}

export const hashesOf = (users: Users): Map<string, string> =>
  new Map([...users].map(([name, u]) => [name, u.passwordHash]));

/** name → password hash (what the HTTP listener checks). */
export const parseUsers = (value: unknown, source = 'users'): Map<string, string> =>
  hashesOf(parseUserEntries(value, source));

export function loadUserEntries(path: string): Users {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new MvirtError('CONFIG_INVALID', `cannot read users file ${path}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new MvirtError('CONFIG_INVALID', `users file ${path} is not JSON`, { cause: err });
  }
  return parseUserEntries(json, path);
}

export const loadUsersFile = (path: string): Map<string, string> => hashesOf(loadUserEntries(path));
