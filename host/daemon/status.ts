/**
 * The retained host status on `<root>/status`: online plus the system.info
 * fields, refreshed periodically (allocation and backends change) and soon
 * after every VM state change; `online:false` on a clean stop.
 */
import type { Bus } from '../broker/types.js';
import type { HostStatus, SystemInfo } from '../../protocol/rpc.js';
import type { MvirtLogger } from '../log.js';

const DEBOUNCE_MS = 200;

export interface StatusPublisher {
  /** Publish now and then every interval. */
  start(): Promise<void>;
  /** Something changed: publish soon (debounced). */
  kick(): void;
  /** Stop refreshing and publish `online:false`. */
  stop(): Promise<void>;
}

export function createStatusPublisher(deps: {
  bus: Bus;
  topic: string;
  hostId: string;
  info: () => Promise<SystemInfo>;
  intervalMs: number;
  log: MvirtLogger;
}): StatusPublisher {
  const { bus, topic, hostId, info, intervalMs, log } = deps;
  let interval: NodeJS.Timeout | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let stopped = false;

  async function publishOnline(): Promise<void> {
    if (stopped) return;
    try {
      const status: HostStatus = {
        ...(await info()),
        hostId,
        online: true,
        at: new Date().toISOString(),
      };
      if (stopped) return;
      await bus.publish(topic, JSON.stringify(status), { retain: true, qos: 1 });
    } catch (err) {
      log.warn({ err }, 'cannot publish host status');
    }
  }

  return {
    async start() {
      await publishOnline();
      interval = setInterval(() => void publishOnline(), intervalMs);
      interval.unref();
    },
    kick() {
      if (stopped || debounce) return;
      debounce = setTimeout(() => {
        debounce = undefined;
        void publishOnline();
      }, DEBOUNCE_MS);
      debounce.unref();
    },
    async stop() {
      stopped = true;
      clearInterval(interval);
      clearTimeout(debounce);
      const status: HostStatus = { hostId, online: false, at: new Date().toISOString() };
      await bus
        .publish(topic, JSON.stringify(status), { retain: true, qos: 1 })
        .catch((err: unknown) => log.warn({ err }, 'cannot publish offline status'));
    },
  };
}
