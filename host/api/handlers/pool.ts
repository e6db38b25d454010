/** The pool.* methods: thin adapters from validated params onto the pool manager. */
import type { PoolManager } from '../../jobs/pools.js';
import type { MutatingMethod } from '../../../protocol/plan.js';
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

/** The methods above that change something: each has a dry run. */
type PoolPlanned = Extract<PoolMethods, MutatingMethod>;

/** Dry runs (protocol/plan.ts): the pool manager's planners make the handlers' own checks. */
export const poolPlanners = ({ pools }: PoolHandlerDeps): Planners<PoolPlanned> => ({
  'pool.set': (p) => pools.plan.set(p),
  'pool.delete': (p) => pools.plan.delete(p.name),
});
