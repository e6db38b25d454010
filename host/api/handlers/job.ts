/** The job.* methods: thin adapters from validated params onto the job manager. */
import type { JobManager } from '../../jobs/manager.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { Handlers, Planners } from '../types.js';

export interface JobHandlerDeps {
  jobs: JobManager;
}

type JobMethods = 'job.run' | 'job.get' | 'job.list' | 'job.cancel' | 'job.logs';

export const jobHandlers = ({ jobs }: JobHandlerDeps): Handlers<JobMethods> => ({
  'job.run': (p) => jobs.run(p),
  'job.get': (p) => jobs.get(p.jobId),
  'job.list': (p) => ({ jobs: jobs.list(p ?? {}) }),
  'job.cancel': (p) => jobs.cancel(p.jobId),
  'job.logs': (p) => jobs.logs(p),
});

type JobPlanned = 'job.run' | 'job.cancel';

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const jobPlanners = (_deps: JobHandlerDeps): Planners<JobPlanned> => ({
  'job.run': () => {
    throw new MvirtError('INTERNAL', 'no dry run for job.run yet');
  },
  'job.cancel': () => {
    throw new MvirtError('INTERNAL', 'no dry run for job.cancel yet');
  },
});
