/**
 * A login flood in its own process (so that the test's own event loop, which
 * times a controller's calls, does not also run the flood): CONNECTs with
 * wrong passwords over `connections` parallel loops, half for a real user
 * (`alice`, so scrypt runs) and half for an unknown one, until stdin ends.
 * Prints the running count of refusals on stdout after every 16.
 *
 *   node --import tsx harness/login-flood.ts PORT [connections]
 */
import { CONNACK, RawClient } from './broker-raw.js';

const port = Number(process.argv[2]);
const connections = Number(process.argv[3] ?? 64);
let stop = false;
let refused = 0;
process.stdin.on('end', () => (stop = true)).resume();

await Promise.all(
  Array.from({ length: connections }, async (_, i) => {
    for (let n = 0; !stop; n++) {
      const c = await RawClient.connect(port);
      const code = await c.handshake({
        clientId: `flood-${process.pid}-${i}-${n}`,
        username: i % 2 ? 'alice' : 'mallory',
        password: 'wrong',
      });
      c.destroy();
      if (code !== CONNACK.ACCEPTED && ++refused % 16 === 0) process.stdout.write(`${refused}\n`);
    }
  }),
);
