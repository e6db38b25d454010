/**
 * The credential `scripts/setup.sh` makes for the installing user, found by
 * the CLI by itself so that `mvirt …` just works once mvirtd requires logins:
 *
 *     ${MVIRT_CREDENTIALS:-${XDG_CONFIG_HOME:-~/.config}/mvirt/credentials.json}
 *     { "broker": "mqtt://127.0.0.1:1883", "username": "…", "password": "…", "cafile": "…" }
 *
 * `broker` and `cafile` are optional. The file must be readable by its owner
 * only (like ssh's keys): one that others can read is refused with the fix.
 * Command-line options and MVIRT_* variables win over it.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from './args.js';
import type { Credentials } from './credentials-schema.js';

export type { Credentials };

/** Where the credential lives for this environment; null without HOME or XDG_CONFIG_HOME. */
export function credentialsPath(env: Record<string, string | undefined>): string | null {
  if (env.MVIRT_CREDENTIALS) return env.MVIRT_CREDENTIALS;
  const config = env.XDG_CONFIG_HOME || (env.HOME ? path.join(env.HOME, '.config') : null);
  return config ? path.join(config, 'mvirt', 'credentials.json') : null;
}

/**
 * The credential file, or null when there is none; a bad one is a UsageError
 * that says what to do. Its schema (zod) is loaded only when there is a file.
 */
export async function loadCredentials(file: string | null): Promise<Credentials | null> {
  if (file === null) return null;
  let text: string;
  try {
    if ((statSync(file).mode & 0o077) !== 0)
      throw new UsageError(
        `${file} is readable by other users: chmod 600 ${file} (it holds a password)`,
      );
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new UsageError(`${file} is not JSON; remove it or run scripts/setup.sh again`);
  }
  const { Credentials } = await import('./credentials-schema.js');
  const r = Credentials.safeParse(json);
  if (!r.success)
    throw new UsageError(
      `${file}: ${r.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`,
    );
  return r.data;
}
