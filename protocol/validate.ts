/** Turn a zod failure into one typed error (INVALID_PARAMS, INVALID_RECORD, …) that names each bad field. */
import type { z } from 'zod';
import { MvirtError, type ErrorCode } from './errors.js';

/**
 * At most this many issues are spelled out: a 1 MiB request with 100,000 bad
 * entries once produced a 17 MB error reply (issue 11).
 */
export const MAX_ISSUES = 20;

export function formatIssues(error: z.ZodError): string {
  const more = error.issues.length - MAX_ISSUES;
  const text = error.issues
    .slice(0, MAX_ISSUES)
    .map((i) => {
      const path = i.path.length ? i.path.join('.') : '(root)';
      if (i.code === 'unrecognized_keys') {
        const keys = i.keys
          .slice(0, MAX_ISSUES)
          .map((k) => (k.length > 64 ? `${k.slice(0, 64)}…` : k));
        const extra = i.keys.length > MAX_ISSUES ? ` and ${i.keys.length - MAX_ISSUES} more` : '';
        return `${path.slice(0, 200)}: unknown field(s) ${keys.join(', ')}${extra}`;
      }
      const message = i.message.length > 200 ? `${i.message.slice(0, 200)}…` : i.message;
      return `${path.length > 200 ? `${path.slice(0, 200)}…` : path}: ${message}`;
    })
    .join('; ');
  return more > 0 ? `${text}; and ${more} more` : text;
}

export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  code: ErrorCode = 'INVALID_PARAMS',
  what = 'params',
): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    throw new MvirtError(code, `invalid ${what}: ${formatIssues(r.error)}`, {
      details: r.error.issues.slice(0, MAX_ISSUES).map((i) => ({
        path: i.path.slice(0, 32).map(String),
        message: i.message.length > 200 ? `${i.message.slice(0, 200)}…` : i.message,
        code: i.code,
      })),
    });
  }
  return r.data;
}
