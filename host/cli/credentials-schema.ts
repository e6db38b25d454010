/** The credential file's schema (credentials.ts): loaded only when there is a file to check. */
import * as z from 'zod';

export const Credentials = z.strictObject({
  broker: z.string().min(1).optional(),
  username: z.string().min(1).max(128),
  password: z.string().min(1),
  cafile: z.string().min(1).optional(),
});
export type Credentials = z.infer<typeof Credentials>;
