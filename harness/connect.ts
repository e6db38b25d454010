/**
 * The one place where tests and benches reach a daemon as a controller: the
 * MQTT connection of every test client (client.ts), and the environment that
 * points a spawned `mvirt` at a daemon. When controllers must authenticate,
 * the credentials are added here and nowhere else.
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { brokerOptions } from '../protocol/client.js';
import { adminLogin } from './test-admin.js';

/** How to reach one daemon: its broker address and topic root. */
export interface DaemonAddress {
  /** `mqtt://127.0.0.1:PORT`, `unix:///path/mvirt.sock` or a socket path. */
  url: string;
  /** `<prefix>/<hostId>` */
  root: string;
}

let seq = 0;

/** A unique client id per connection of this process (ids must not collide across test files). */
export function nextClientId(tag = 'test'): string {
  return `${tag}-${process.pid}-${++seq}`;
}

/** Connect a controller to `url` (unix socket paths and `unix://` URLs included); no reconnects. */
export async function connectController(
  url: string,
  o: { clientId?: string; extra?: IClientOptions } = {},
): Promise<MqttClient> {
  const b = brokerOptions(url);
  const opts: IClientOptions = {
    ...b.opts,
    // Over TCP/WebSocket controllers log in (as the test admin); the unix socket is anonymous.
    ...(b.url ? adminLogin() : {}),
    clientId: o.clientId ?? nextClientId(),
    protocolVersion: 4,
    reconnectPeriod: 0,
    ...o.extra,
  };
  return b.url ? mqtt.connectAsync(b.url, opts) : mqtt.connectAsync(opts);
}

/** Environment for a spawned `mvirt` (bin/mvirt.js) that talks to the daemon at `d`. */
export function cliEnv(d: DaemonAddress): Record<string, string> {
  const [prefix, hostId] = d.root.split('/');
  return { MVIRT_BROKER: d.url, MVIRT_HOST: hostId!, MVIRT_PREFIX: prefix! };
}
