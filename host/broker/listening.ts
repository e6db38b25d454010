/**
 * Who listens: the topic filters of the clients connected now, so the daemon
 * can skip work nobody would receive (a VM's console output is published
 * only while someone subscribes to it, issue 12). aedes keeps only QoS > 0
 * subscriptions in its persistence trie, so this follows its 'subscribe',
 * 'unsubscribe' and 'clientDisconnect' events instead.
 *
 * Answers are cached per topic until the next subscription change; the
 * filters are few (one to a handful per controller), so a miss is a short scan.
 */
import type { Aedes, Client } from 'aedes';
import { topicMatches } from '../../protocol/topics.js';

/** SUBACK's "refused" code: such a filter was never subscribed. */
const REFUSED = 128;
const MAX_CACHED = 4096;

export interface Listening {
  /** Whether any connected client has a subscription whose filter matches `topic`. */
  has(topic: string): boolean;
}

export function trackListening(aedes: Aedes): Listening {
  const byClient = new Map<Client, Set<string>>();
  const cache = new Map<string, boolean>();

  aedes.on('subscribe', (subs, client) => {
    let filters = byClient.get(client);
    if (!filters) byClient.set(client, (filters = new Set()));
    for (const s of subs) if ((s.qos as number) !== REFUSED) filters.add(s.topic);
    cache.clear();
  });
  aedes.on('unsubscribe', (topics, client) => {
    const filters = byClient.get(client);
    if (!filters) return;
    for (const t of topics) filters.delete(t);
    cache.clear();
  });
  aedes.on('clientDisconnect', (client) => {
    if (byClient.delete(client)) cache.clear();
  });

  return {
    has(topic) {
      const known = cache.get(topic);
      if (known !== undefined) return known;
      let found = false;
      for (const [client, filters] of byClient) {
        // A client closed without 'clientDisconnect' (aedes emits it only
        // for the id's current holder): it listens no more.
        if (client.closed) {
          byClient.delete(client);
          continue;
        }
        for (const f of filters) if ((found = topicMatches(f, topic))) break;
        if (found) break;
      }
      // Topics come and go with VMs; the cache never outgrows a bound.
      if (cache.size >= MAX_CACHED) cache.clear();
      cache.set(topic, found);
      return found;
    },
  };
}
