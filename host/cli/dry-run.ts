/**
 * The client a `--dry-run` command gets (plan.ts says what a dry run is): its
 * first change is sent as a plan request and ends the command with a
 * DryRunAnswer. Loaded with the client: it needs rpc.ts's method table.
 */
import type { MvirtClient } from '../../protocol/client.js';
import { isMutating } from '../../protocol/rpc.js';
import { DryRunAnswer } from './plan.js';

export function dryRunClient(client: MvirtClient): MvirtClient {
  const call: MvirtClient['call'] = async (method, ...args) => {
    if (!isMutating(method)) return client.call(method, ...args);
    const [params, opts] = args;
    throw new DryRunAnswer(await client.plan(method, params as never, opts));
  };
  return Object.assign(Object.create(client) as MvirtClient, { call });
}
