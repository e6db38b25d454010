/**
 * The controllers' users file: `{ "users": [{ "username", "passwordHash", "role"? }] }`
 * with hashes in the format of passwords.ts. `role` (admin, operator, viewer)
 * is additive: a file without it stays valid. Read once at start; a malformed
 * file is a CONFIG_INVALID error, never a silently open broker.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { MvirtError } from '../../protocol/errors.js';
import { formatIssues } from '../../protocol/validate.js';
import { parsePasswordHash } from './passwords.js';

export const UserEntry = z.strictObject({
  username: z.string().min(1).max(128),
  passwordHash: z.string().refine((s) => parsePasswordHash(s) !== null, {
    message: 'not a $scrypt$n=…,r=…,p=…$salt$hash string (see host/broker/passwords.ts)',
  }),
  role: z.enum(['admin', 'operator', 'viewer']).optional(),
});
export type UserEntry = z.infer<typeof UserEntry>;

export const UsersFile = z.strictObject({ users: z.array(UserEntry).max(10_000) });

export function parseUsers(value: unknown, source = 'users'): Map<string, string> {
  const r = UsersFile.safeParse(value);
  if (!r.success) throw new MvirtError('CONFIG_INVALID', `${source}: ${formatIssues(r.error)}`);
  const users = new Map<string, string>();
  for (const u of r.data.users) {
    if (users.has(u.username))
      throw new MvirtError('CONFIG_INVALID', `${source}: user ${u.username} listed twice`);
    users.set(u.username, u.passwordHash);
  }
  return users;
}

export function loadUsersFile(path: string): Map<string, string> {
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
  return parseUsers(json, path);
}
