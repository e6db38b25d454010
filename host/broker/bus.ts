/**
 * The daemon's own side of the broker (the Bus): in-process publish and
 * subscribe straight on aedes, bypassing the client ACL because the daemon is
 * trusted. Topics are still validated so a programming error shows up as a
 * rejected promise instead of a message nobody can subscribe to.
 */
import type { Aedes, AedesPublishPacket } from 'aedes';
import { MvirtError } from '../../protocol/errors.js';
import { DAEMON, runAs } from '../auth/actor.js';
import { FULL_ACCESS } from '../auth/roles.js';
import type { MvirtLogger } from '../log.js';
import type { Counters } from './stats.js';
import type { Bus, LastWill, MessageHandler, PublishOpts, Sender } from './types.js';
import { filterProblem, publishTopicProblem } from './validate.js';

export interface InProcessBus extends Bus {
  setLastWill(will: LastWill | null): void;
  /** The will registered with setLastWill, for the broker's close(). */
  lastWill(): LastWill | null;
}

export const DAEMON_SENDER: Sender = {
  actor: DAEMON,
  access: FULL_ACCESS,
  replyRefusal: () => null,
};

/**
 * @param senderOf who published a payload (authorize.ts records it); the
 *   daemon's own publishes are recorded here as DAEMON_SENDER.
 */
export function createBus(
  aedes: Aedes,
  counters: Counters,
  log: MvirtLogger,
  senderOf: (payload: Buffer) => Sender | undefined = () => undefined,
  remember: (payload: Buffer, sender: Sender) => void = () => undefined,
): InProcessBus {
  let will: LastWill | null = null;

  function publish(topic: string, payload: Buffer | string, opts: PublishOpts = {}): Promise<void> {
    const bad = publishTopicProblem(topic);
    if (bad !== null)
      return Promise.reject(
        new MvirtError('INVALID_NAME', `topic ${JSON.stringify(topic)}: ${bad}`),
      );
    counters.messagesIn++;
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
    remember(body, DAEMON_SENDER);
    return new Promise((resolve, reject) =>
      aedes.publish(
        {
          cmd: 'publish',
          topic,
          payload: body,
          qos: opts.qos ?? 0,
          retain: opts.retain ?? false,
          dup: false,
        },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  }

  async function subscribe(filter: string, handler: MessageHandler): Promise<() => Promise<void>> {
    const bad = filterProblem(filter);
    if (bad !== null)
      throw new MvirtError('INVALID_NAME', `filter ${JSON.stringify(filter)}: ${bad}`);
    const deliver = (packet: AedesPublishPacket, cb: () => void): void => {
      const payload = Buffer.isBuffer(packet.payload)
        ? packet.payload
        : Buffer.from(packet.payload);
      const sender = senderOf(payload);
      try {
        if (sender === undefined) handler(packet.topic, payload);
        else runAs(sender, () => handler(packet.topic, payload, sender));
      } catch (err) {
        // A throwing handler must not stall mqemitter for everyone else.
        log.error({ err, topic: packet.topic, filter }, 'bus handler threw');
      }
      cb();
    };
    await new Promise<void>((resolve) => aedes.subscribe(filter, deliver, resolve));
    let done = false;
    return () => {
      if (done) return Promise.resolve();
      done = true;
      return new Promise<void>((resolve) => aedes.unsubscribe(filter, deliver, resolve));
    };
  }

  return {
    publish,
    subscribe,
    setLastWill: (w) => {
      will = w;
    },
    lastWill: () => will,
  };
}
