/**
 * Fleet placement (docs/fleet.md, "Placing work on the fleet"): a controller
 * puts a request for `job.run` or `vm.create` into the fleet queue instead of
 * sending it to one host; the hosts with room claim it, the requester picks
 * one claim and sends the request to that host. No consensus of mvirt's own:
 * the requester is the one place that decides, so a request runs at most once
 * whatever the brokers deliver (a `$share/…` subscription on bridged
 * Mosquittos delivers once per broker, not once per fleet).
 *
 *  - `P/_fleet/queue/<clientId>/<requestId>`: the request, retained while it
 *    waits (the visible queue); an empty retained message once it is placed
 *    or given up. Only its requester may publish there (the shipped ACL).
 *  - `<claimTo>` (in the requester's `P/_clients/<clientId>/replies/…`): a
 *    host's claim, `{request, hostId, at}`.
 */
import { z } from 'zod';
import { PARAMS } from './rpc.js';

/** The methods a controller may send to the fleet instead of to a host. */
export const FLEET_METHODS = ['job.run', 'vm.create'] as const;
export type FleetMethod = (typeof FLEET_METHODS)[number];

export const fleetQueueTopic = (prefix: string, clientId: string, requestId: string): string =>
  `${prefix}/_fleet/queue/${clientId}/${requestId}`;
export const fleetQueueFilter = (prefix: string): string => `${prefix}/_fleet/queue/+/+`;

/** The client id and request id a queue topic names; null for any other topic. */
export function parseFleetQueueTopic(
  prefix: string,
  topic: string,
): { clientId: string; requestId: string } | null {
  const pre = `${prefix}/_fleet/queue/`;
  if (!topic.startsWith(pre)) return null;
  const [clientId, requestId, ...rest] = topic.slice(pre.length).split('/');
  if (!clientId || !requestId || rest.length > 0) return null;
  return { clientId, requestId };
}

const Label = z.string().min(1).max(64);

/** What a host must be or have to take the request, beyond room for it. */
export const FleetNeed = z.strictObject({
  /** Only this host. */
  host: z.string().min(1).max(64).optional(),
  /** Every one of these labels (mvirtd --label K=V). */
  labels: z.record(Label, z.string().max(256)).optional(),
});
export type FleetNeed = z.infer<typeof FleetNeed>;

const RequestBase = {
  id: z.string().min(1).max(128),
  need: FleetNeed.optional(),
  /** Where hosts send their claims: a topic under the requester's `P/_clients/<clientId>/replies`. */
  claimTo: z.string().min(1).max(512),
  /** When the request was first queued: hosts claim the oldest first. */
  at: z.string(),
  /** Hosts ignore the request after this (its requester gave up or died). */
  expiresAt: z.string(),
  /** Hosts that failed this request (a lost race for room): they do not claim it again. */
  exclude: z.array(z.string().max(64)).max(256).optional(),
};

/** A queued fleet request: the method's own params, validated as the host would. */
export const FleetRequest = z.discriminatedUnion('method', [
  z.strictObject({ ...RequestBase, method: z.literal('job.run'), params: PARAMS['job.run'] }),
  z.strictObject({ ...RequestBase, method: z.literal('vm.create'), params: PARAMS['vm.create'] }),
]);
export type FleetRequest = z.infer<typeof FleetRequest>;

/** A host's claim of a queued request: it has room and meets the need, now. */
export const FleetClaim = z.strictObject({
  request: z.string().min(1).max(128),
  hostId: z.string().min(1).max(64),
  at: z.string(),
});
export type FleetClaim = z.infer<typeof FleetClaim>;
