/**
 * The fleet on the host's own broker: with --uplink, the retained status of
 * every other host of the external broker (`P/+/status`) is republished,
 * retained, on the embedded broker, so its dashboard and `mvirt hosts` there
 * list the whole fleet. Only statuses (one small message per host every
 * --status-interval-ms): everything else of another host stays on the
 * external broker, where controllers reach it.
 */
import type { Bus } from '../broker/types.js';
import type { MvirtLogger } from '../log.js';

export function createFleetView(d: {
  uplink: Pick<Bus, 'subscribe'>;
  local: Pick<Bus, 'publish'>;
  prefix: string;
  hostId: string;
  log: MvirtLogger;
}): { start(): Promise<void>; close(): Promise<void> } {
  const own = `${d.prefix}/${d.hostId}/status`;
  let off: (() => Promise<void>) | undefined;
  return {
    async start() {
      off = await d.uplink.subscribe(`${d.prefix}/+/status`, (topic, payload) => {
        if (topic === own) return; // this host publishes its own
        d.local
          .publish(topic, payload, { retain: true, qos: 0 })
          .catch((err: unknown) => d.log.warn({ err, topic }, 'cannot republish a fleet status'));
      });
    },
    async close() {
      await off?.();
    },
  };
}
