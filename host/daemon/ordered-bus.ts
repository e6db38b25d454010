/**
 * Publish in order, one at a time. aedes numbers each publish when it is
 * created and drops, per subscriber, any message whose number is lower than
 * one already delivered (its cluster dedupe). A retained publish is stored
 * before it is emitted, so a later non-retained publish can overtake it and
 * the retained one is then silently dropped: e.g. the empty retained state of
 * `vm.delete` vanished behind the `deleted` event. Starting each publish only
 * after the previous one was emitted keeps the numbers in emission order.
 */
import type { Bus } from '../broker/types.js';

export function createOrderedBus(bus: Bus): Bus {
  let tail: Promise<unknown> = Promise.resolve();
  return {
    publish(topic, payload, opts) {
      const p = tail.then(() => bus.publish(topic, payload, opts));
      tail = p.catch(() => undefined);
      return p;
    },
    subscribe: (filter, handler) => bus.subscribe(filter, handler),
  };
}
