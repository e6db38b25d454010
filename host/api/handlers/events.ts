/** events.query: the audit/event log, by object, level and time. */
import type { EventLog } from '../../events/log.js';
import { toMs } from '../time.js';
import type { Handlers } from '../types.js';

export interface EventHandlerDeps {
  events: Pick<EventLog, 'query'>;
  /** Lets `objectId` name a VM by its name too (PROTOCOL: a VM is its id or name). */
  vms: { resolveId(ref: string): string | undefined };
}

export const eventHandlers = ({ events, vms }: EventHandlerDeps): Handlers<'events.query'> => ({
  'events.query': (p) => {
    const q: Parameters<EventLog['query']>[0] = {};
    if (p?.objectId !== undefined) q.objectId = vms.resolveId(p.objectId) ?? p.objectId;
    if (p?.level !== undefined) q.level = p.level;
    if (p?.actor !== undefined) q.actor = p.actor;
    const since = toMs(p?.since, 'since');
    const until = toMs(p?.until, 'until');
    if (since !== undefined) q.since = since;
    if (until !== undefined) q.until = until;
    if (p?.limit !== undefined) q.limit = p.limit;
    return { events: events.query(q) };
  },
});
