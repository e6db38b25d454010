/**
 * Jobs under a pseudo-terminal (job.run {tty: true, cols, rows}): the window
 * size as the RPC and the agent channel carry it, and the agent channel's
 * `resize` message (host → guest). The guest side is guest-agent/tty.ts and
 * the µOS's mvirt-pty helper (initramfs/src/mvirt-pty.c).
 */
import * as z from 'zod';
import { AgentId } from './ids.js';
import { TTY_MAX_COLS, TTY_MAX_ROWS } from './limits.js';

export { TTY_DEFAULT_SIZE, TTY_MAX_COLS, TTY_MAX_ROWS } from './limits.js';

export const TtyCols = z.number().int().min(1).max(TTY_MAX_COLS);
export const TtyRows = z.number().int().min(1).max(TTY_MAX_ROWS);

/** A terminal's window size in character cells. */
export const TtySize = z.strictObject({ cols: TtyCols, rows: TtyRows });
export type TtySize = z.infer<typeof TtySize>;

/**
 * host → guest: a tty job's window changed size. With an `id`, the agent
 * replies `{running}` (false: the job had ended, or runs without a tty).
 */
export const Resize = z.strictObject({
  id: AgentId.optional(),
  jobId: AgentId,
  cols: TtyCols,
  rows: TtyRows,
});
export type Resize = z.infer<typeof Resize>;
