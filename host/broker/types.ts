/**
 * The controller-facing bus as the rest of the daemon sees it. The embedded
 * aedes broker implements it today; an uplink to an external broker cluster
 * could implement it tomorrow without the VM or job managers noticing.
 */
import type { Duplex } from 'node:stream';

export interface PublishOpts {
  retain?: boolean;
  qos?: 0 | 1;
}

export type MessageHandler = (topic: string, payload: Buffer) => void;

export interface Bus {
  publish(topic: string, payload: Buffer | string, opts?: PublishOpts): Promise<void>;
  /** Subscribe the daemon itself; returns an unsubscribe function. */
  subscribe(filter: string, handler: MessageHandler): Promise<() => Promise<void>>;
}

export interface AgentChannelHandle {
  /** Resolves when the agent's MQTT session on this stream ends. */
  readonly closed: Promise<void>;
  close(): void;
}

export interface Broker extends Bus {
  /** Hand a per-VM agent byte stream to the broker; the client is confined to that VM's subtree. */
  attachAgentChannel(vmId: string, stream: Duplex): AgentChannelHandle;
  /** Addresses actually bound (ports resolved), for logs and tests. */
  readonly addresses: { tcp?: string; unix?: string; ws?: string };
  /** Number of connected clients. */
  clientCount(): number;
  close(): Promise<void>;
}
