/**
 * The job.* methods arrive with the job manager (next issue). They are routed
 * already so the table is complete; until then each answers a typed error.
 */
import { MvirtError } from '../../../protocol/errors.js';
import type { Handlers } from '../types.js';

type JobMethods = 'job.run' | 'job.get' | 'job.list' | 'job.cancel' | 'job.logs';

const notYet = (method: JobMethods) => (): never => {
  throw new MvirtError('UNKNOWN_METHOD', `${method} is not implemented yet (no job manager)`, {
    details: { method, reason: 'not implemented' },
  });
};

export const jobHandlers = (): Handlers<JobMethods> => ({
  'job.run': notYet('job.run'),
  'job.get': notYet('job.get'),
  'job.list': notYet('job.list'),
  'job.cancel': notYet('job.cancel'),
  'job.logs': notYet('job.logs'),
});
