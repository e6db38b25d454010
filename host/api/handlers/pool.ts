/** The pool.* methods: thin adapters from validated params onto the pool manager. */
import type { PoolManager } from '../../jobs/pools.js';
import { MvirtError } from '../../../protocol/errors.js';
import type { Handlers, Planners } from '../types.js';

export interface PoolHandlerDeps {
  pools: PoolManager;
}

type PoolMethods = 'pool.set' | 'pool.get' | 'pool.list' | 'pool.delete';

export const poolHandlers = ({ pools }: PoolHandlerDeps): Handlers<PoolMethods> => ({
  'pool.set': (p) => pools.set(p),
  'pool.get': (p) => pools.get(p.name),
  'pool.list': () => ({ pools: pools.list() }),
  'pool.delete': (p) => pools.delete(p.name),
});

type PoolPlanned = 'pool.set' | 'pool.delete';

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const poolPlanners = (_deps: PoolHandlerDeps): Planners<PoolPlanned> => ({
  'pool.set': () => {
    throw new MvirtError('INTERNAL', 'no dry run for pool.set yet');
  },
  'pool.delete': () => {
    throw new MvirtError('INTERNAL', 'no dry run for pool.delete yet');
  },
});
