/** Turn a zod failure into one typed error (INVALID_PARAMS, INVALID_RECORD, …) that names each bad field. */
import type { z } from 'zod';
import { MvirtError, type ErrorCode } from './errors.js';

export function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const path = i.path.length ? i.path.join('.') : '(root)';
      if (i.code === 'unrecognized_keys') return `${path}: unknown field(s) ${i.keys.join(', ')}`;
      return `${path}: ${i.message}`;
    })
    .join('; ');
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
      details: r.error.issues.map((i) => ({
        path: i.path.map(String),
        message: i.message,
        code: i.code,
      })),
    });
  }
  return r.data;
}
