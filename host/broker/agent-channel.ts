/**
 * Per-VM agent channels: a byte stream (virtio-serial chardev socket, vsock
 * unix socket) that carries MQTT and whose identity is the stream itself. The
 * stream is admitted as transport `agent-channel` bound to vmId before aedes
 * reads a byte, so whatever the guest sends it can only ever be that VM's
 * agent (see authenticate.ts and acl.ts).
 *
 * With virtio-serial the host-side socket outlives an agent restart and can
 * start with bytes of an older session: channel-sessions.ts splits the stream
 * into the agent's successive sessions. A session the broker ends closes the
 * channel; the owner re-attaches when `closed` resolves.
 */
import type { Duplex } from 'node:stream';
import { MvirtError } from '../../protocol/errors.js';
import { nameProblem } from '../../protocol/topics.js';
import type { MvirtLogger } from '../log.js';
import { splitChannelSessions } from './channel-sessions.js';
import { GuardedStream } from './frame-guard.js';
import type { AgentChannelHandle } from './types.js';

/** The owner's handle on an admitted agent stream (a channel, or a guest TCP connection). */
export function agentHandle(guarded: Duplex): AgentChannelHandle {
  const closed = new Promise<void>((resolve) => {
    if (guarded.destroyed) resolve();
    else guarded.once('close', () => resolve());
  });
  return {
    closed,
    close: () => void guarded.destroy(),
    hold: (paused) => {
      if (guarded instanceof GuardedStream) guarded.hold(paused);
    },
  };
}

export function createAgentChannelAttacher(
  /** Take the channel (the broker tracks it) and give back how to admit each of its sessions. */
  track: (channel: Duplex, vmId: string) => (session: Duplex) => Duplex,
  isClosing: () => boolean,
  limits: { maxConnectSize: number; connectTimeoutMs: number },
  log: MvirtLogger,
) {
  return function attachAgentChannel(vmId: string, stream: Duplex): AgentChannelHandle {
    const bad = nameProblem(vmId);
    if (bad !== null) throw new MvirtError('INVALID_NAME', `VM id ${JSON.stringify(vmId)}: ${bad}`);
    if (isClosing()) {
      stream.destroy();
      throw new MvirtError('SHUTTING_DOWN', 'the broker is shutting down');
    }
    return splitChannelSessions(stream, track(stream, vmId), limits, {
      skipped: (bytes) => log.info({ vmId, bytes }, 'agent channel: skipped bytes of no session'),
      restarted: () => log.info({ vmId }, 'agent channel: the agent began a new session'),
      violation: (reason) => log.warn({ vmId, reason }, 'agent channel closed'),
    });
  };
}
