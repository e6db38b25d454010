/**
 * The CLI's snapshot suites' one fixture: the real mvirtd on a fake backend
 * that can save state (harness/fake-vms.ts, the real agent core), a spy on
 * its requests, and `mvirt` run in-process against it.
 */
import { after, before } from 'node:test';
import { runCli } from '../../host/cli/run.js';
import { cliEnv } from '../../harness/connect.js';
import { spyRequests, type RequestSpy } from '../../harness/daemon.js';
import { createFakeHypervisor } from '../../harness/fake-vms.js';
import { memoryIo } from './cli-io.js';
import { cleanupAll, startJobDaemon, type JobDaemon } from './jobs.js';

export interface SnapshotCli {
  /** Set once the suite's before hook has run. */
  readonly j: JobDaemon;
  readonly spy: RequestSpy;
  mvirt(argv: string[]): Promise<{ code: number; out: string; err: string }>;
}

/** Call inside a describe: its before and after hooks start and stop the daemon. */
export function snapshotCliFixture(): SnapshotCli {
  let j!: JobDaemon;
  let spy!: RequestSpy;
  before(async () => {
    j = await startJobDaemon({
      hv: createFakeHypervisor({ agent: 'real', capabilities: { snapshots: true } }),
    });
    spy = await spyRequests(j.d);
  });
  after(async () => {
    await spy.stop();
    await cleanupAll();
  });
  return {
    get j() {
      return j;
    },
    get spy() {
      return spy;
    },
    async mvirt(argv) {
      const io = memoryIo({ env: cliEnv(j.d) });
      const code = await runCli(argv, io);
      return { code, out: io.out(), err: io.errText() };
    },
  };
}
