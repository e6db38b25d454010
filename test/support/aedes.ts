/**
 * A plain aedes broker on a loopback port, for client tests about what is
 * seen on a broker shared by several hosts (retained statuses), which one
 * mvirtd's embedded broker never shows.
 */
import { Aedes } from 'aedes';
import { createServer, type AddressInfo } from 'node:net';
import { connectController } from '../../harness/connect.js';
import { brokerTopic, topics } from '../../protocol/topics.js';

export type { Aedes };

export interface PlainBroker {
  url: string;
  aedes: Aedes;
  /** Publish host `hostId`'s retained status (prefix mvirt) as mvirtd does. */
  announce(hostId: string, online: boolean): Promise<void>;
  /** Retain `mvirt/_broker` as mvirtd's embedded broker does (null: a record without hostId). */
  announceOwner(hostId: string | null): Promise<void>;
  close(): Promise<void>;
}

export async function startAedes(): Promise<PlainBroker> {
  const aedes = await Aedes.createBroker();
  const server = createServer(aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const pub = await connectController(url);
  return {
    url,
    aedes,
    announce: async (hostId, online) => {
      const status = { hostId, online, at: new Date().toISOString() };
      await pub.publishAsync(topics(`mvirt/${hostId}`).status, JSON.stringify(status), {
        retain: true,
        qos: 1,
      });
    },
    announceOwner: async (hostId) => {
      const payload = JSON.stringify(hostId === null ? { host: 'x' } : { hostId });
      // As the broker itself: controllers may not publish this topic to mvirtd.
      await new Promise<void>((resolve, reject) =>
        aedes.publish(
          {
            cmd: 'publish',
            topic: brokerTopic('mvirt'),
            payload,
            qos: 0,
            retain: true,
            dup: false,
          },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    },
    close: async () => {
      await pub.endAsync();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
