/** The job.* methods: thin adapters from validated params onto the job manager. */
import type { JobManager } from '../../jobs/manager.js';
import type { MutatingMethod } from '../../../protocol/plan.js';
import type { Handlers, Planners } from '../types.js';

export interface JobHandlerDeps {
  jobs: JobManager;
}

type JobMethods =
  | 'job.run'
  | 'job.get'
  | 'job.list'
  | 'job.cancel'
  | 'job.signal'
  | 'job.stdin'
  | 'job.resize'
  | 'job.logs';

export const jobHandlers = ({ jobs }: JobHandlerDeps): Handlers<JobMethods> => ({
  'job.run': (p) => jobs.run(p),
  'job.get': (p) => jobs.get(p.jobId),
  'job.list': (p) => ({ jobs: jobs.list(p ?? {}) }),
  'job.cancel': (p) => jobs.cancel(p.jobId),
  'job.signal': (p) => jobs.signal(p),
  'job.stdin': (p) => jobs.stdin(p),
  'job.resize': (p) => jobs.resize(p),
  'job.logs': (p) => jobs.logs(p),
});

/** The methods above that change something: each has a dry run. */
type JobPlanned = Extract<JobMethods, MutatingMethod>;

/** Dry runs (protocol/plan.ts): the job manager's planners make the handlers' own checks. */
export const jobPlanners = ({ jobs }: JobHandlerDeps): Planners<JobPlanned> => ({
  'job.run': (p) => jobs.plan.run(p),
  'job.cancel': (p) => jobs.plan.cancel(p.jobId),
  'job.signal': (p) => jobs.plan.signal(p),
  'job.stdin': (p) => jobs.plan.stdin(p),
  'job.resize': (p) => jobs.plan.resize(p),
});
