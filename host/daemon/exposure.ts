/**
 * What mvirtd's controller-facing listeners expose, and to whom.
 *
 *  - The gate: with bridge networking on, controller MQTT (TCP, WebSocket)
 *    and HTTP listeners refuse every connection that comes from the guest
 *    subnet or arrives on the bridge address, even when an operator binds
 *    them to 0.0.0.0; only the guest listener (per-VM tokens) answers there.
 *    A guest's packets to any other host address still enter through the
 *    bridge with a source in the subnet (the host routes replies back to the
 *    subnet only), so checking the source covers the host's other addresses
 *    too. The check runs on the raw connection, before TLS or MQTT.
 *  - Warnings at start for listeners that speak plaintext off loopback.
 */
import type { Gate } from '../broker/listeners.js';
import type { Network } from '../network/index.js';
import type { DaemonOptions } from './options.js';

const unmapped = (a: string | undefined): string | undefined =>
  a?.startsWith('::ffff:') ? a.slice(7) : a;

export function guestNetworkGate(network: Pick<Network, 'options'>): Gate {
  return (remote, local) => {
    const o = network.options;
    if (!o.bridge) return null;
    const r = unmapped(remote);
    if (r !== undefined && o.subnet.contains(r))
      return `from the guest network ${o.subnet.cidr} (bridge ${o.bridge}): only the guest listener answers guests`;
    if (unmapped(local) === o.subnet.hostIp)
      return `arrived on the bridge address ${o.subnet.hostIp}: only the guest listener answers there`;
    return null;
  };
}

const isLoopbackHost = (host: string): boolean =>
  host === 'localhost' || host === '::1' || host === '[::1]' || host.startsWith('127.');

/** One message per plaintext controller listener bound off loopback. */
export function plainListenerWarnings(
  o: Pick<DaemonOptions, 'listen' | 'wsListen' | 'http'>,
  tls: boolean,
): string[] {
  if (tls) return [];
  const out: string[] = [];
  const check = (value: string | false, option: string): void => {
    if (value === false) return;
    const host = value.slice(0, value.lastIndexOf(':'));
    if (isLoopbackHost(host)) return;
    out.push(
      `--${option} ${value} speaks plaintext off loopback: passwords and every message cross the network unencrypted; give --tls-cert and --tls-key`,
    );
  };
  check(o.listen, 'listen');
  check(o.wsListen, 'ws-listen');
  check(o.http, 'http');
  return out;
}
