/**
 * The one route table: every RPC method of protocol/rpc.ts maps to its params
 * schema (from the protocol, never redefined here) and its handler. The type
 * requires an entry for every method, so a method added to the protocol does
 * not compile until it is routed.
 */
import { PARAMS, type RpcMethod } from '../../protocol/rpc.js';
import type { Handlers, RouteTable } from './types.js';
import { systemHandlers, type SystemDeps } from './handlers/system.js';
import { vmHandlers, type VmHandlerDeps } from './handlers/vm.js';
import { eventHandlers, type EventHandlerDeps } from './handlers/events.js';
import { jobHandlers, type JobHandlerDeps } from './handlers/job.js';
import { poolHandlers, type PoolHandlerDeps } from './handlers/pool.js';
import { metricsHandlers, type MetricsHandlerDeps } from './handlers/metrics.js';

export type RouteDeps = SystemDeps &
  VmHandlerDeps &
  EventHandlerDeps &
  JobHandlerDeps &
  PoolHandlerDeps &
  MetricsHandlerDeps;

export function createRoutes(deps: RouteDeps): RouteTable {
  const handlers: Handlers<RpcMethod> = {
    ...systemHandlers(deps),
    ...vmHandlers(deps),
    ...eventHandlers(deps),
    ...jobHandlers(deps),
    ...poolHandlers(deps),
    ...metricsHandlers(deps),
  };
  const table = {} as Record<RpcMethod, unknown>;
  for (const m of Object.keys(PARAMS) as RpcMethod[]) {
    table[m] = { schema: PARAMS[m], handler: handlers[m] };
  }
  return table as RouteTable;
}
