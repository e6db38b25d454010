/**
 * Ids on the agent channel, shared by its message modules (agent.ts, tty.ts).
 * They are the host's (`job-<hex>`, UUIDs): a guest echoes them, it never
 * names new ones.
 */
import * as z from 'zod';

export const AgentId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'an id is letters, digits and . _ : -');
