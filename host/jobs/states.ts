/**
 * The job state machine (DESIGN: Jobs). The only place that says which state
 * may follow which; the job manager's `transition()` refuses anything else.
 */
import type { JobState } from '../../protocol/rpc.js';

export const JOB_TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  // failed: its VM could not be booted or the command could not be started;
  // lost: the daemon restarted and the job's VM is gone.
  queued: ['running', 'failed', 'cancelled', 'lost'],
  running: ['succeeded', 'failed', 'timed_out', 'cancelled', 'lost'],
  succeeded: [],
  failed: [],
  timed_out: [],
  cancelled: [],
  lost: [],
};

export const canTransitionJob = (from: JobState, to: JobState): boolean =>
  JOB_TRANSITIONS[from].includes(to);
