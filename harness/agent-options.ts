/**
 * Agent options for tests and benches that run the real agent core in the
 * host process (test/support/agent-harness.ts, the fake VMs' guests in fake-guest.ts):
 * fast reconnects and short kill/pipe grace periods.
 */
import type { AgentOptions } from '../guest-agent/agent.js';
import { DEFAULT_JOB_OPTIONS } from '../guest-agent/jobs.js';
import { DEFAULT_OUTBOX_LIMITS } from '../guest-agent/outbox.js';

export const TEST_AGENT_OPTIONS: Pick<AgentOptions, 'connection' | 'outbox' | 'jobs'> = {
  connection: {
    keepaliveS: 30,
    connectTimeoutMs: 5000,
    backoff: { initialMs: 10, maxMs: 100, factor: 2, jitter: 0 },
  },
  outbox: DEFAULT_OUTBOX_LIMITS,
  jobs: { ...DEFAULT_JOB_OPTIONS, killGraceMs: 300, pipeGraceMs: 300 },
};
