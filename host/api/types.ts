/** Types shared by the route table, the handlers and the RPC server. */
import type { z } from 'zod';
import type {
  DryRunPlan,
  MutatingMethod,
  PARAMS,
  ResultOf,
  RpcMethod,
} from '../../protocol/rpc.js';
import type { Encoding } from '../../protocol/codec.js';
import type { Permission } from '../auth/roles.js';

export interface RequestCtx {
  method: RpcMethod;
  id?: string;
  encoding: Encoding;
}

export type ParamsOut<M extends RpcMethod> = z.output<(typeof PARAMS)[M]>;

export type Handler<M extends RpcMethod> = (
  params: ParamsOut<M>,
  ctx: RequestCtx,
) => Promise<ResultOf<M>> | ResultOf<M>;

export type Handlers<M extends RpcMethod> = { [K in M]: Handler<K> };

/** A mutating method's dry run (protocol/plan.ts): the same checks, a plan, no change. */
export type Planner<M extends MutatingMethod> = (
  params: ParamsOut<M>,
  ctx: RequestCtx,
) => Promise<DryRunPlan> | DryRunPlan;

export type Planners<M extends MutatingMethod> = { [K in M]: Planner<K> };

export interface Route<M extends RpcMethod> {
  schema: (typeof PARAMS)[M];
  permission: Permission;
  handler: Handler<M>;
  /** Present exactly for the mutating methods. */
  plan?: M extends MutatingMethod ? Planner<M> : never;
}

export type RouteTable = { [M in RpcMethod]: Route<M> };
