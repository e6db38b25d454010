/**
 * What a controller reaches inside a guest over its agent channel, besides
 * jobs: its files (fs.*, host/fs/) and port forwards (port.*, host/ports/).
 */
import { isIP } from 'node:net';
import { createGuestFiles } from '../fs/files.js';
import { createPortForwards } from '../ports/forwards.js';

type FilesDeps = Parameters<typeof createGuestFiles>[0];
type ForwardsDeps = Parameters<typeof createPortForwards>[0];

export function createGuestIo(d: {
  agents: FilesDeps['agents'];
  vms: FilesDeps['vms'] & ForwardsDeps['vms'];
  events: FilesDeps['events'] & ForwardsDeps['events'];
  streams: ForwardsDeps['streams'];
  /** The host's broker: forwards publish their notices there and end with their controller. */
  broker: ForwardsDeps['bus'] & {
    hasSubscriber(topic: string): boolean;
    onClientGone(cb: (clientId: string) => void): void;
  };
  ownerOfVm: ForwardsDeps['ownerOfVm'];
  prefix: string;
  /** The bridge subnet: guests reach the host there, so no forward may listen on it. */
  subnet: { contains(ip: string): boolean };
  log: FilesDeps['log'] & ForwardsDeps['log'];
}) {
  const files = createGuestFiles({ agents: d.agents, vms: d.vms, events: d.events, log: d.log });
  // Port forwards (issue 17): they end with the controller connection that opened them.
  const ports = createPortForwards({
    streams: d.streams,
    vms: d.vms,
    ownerOfVm: d.ownerOfVm,
    events: d.events,
    bus: d.broker,
    prefix: d.prefix,
    hasSubscriber: (topic) => d.broker.hasSubscriber(topic),
    guestReachable: (ip) => isIP(ip) === 4 && d.subnet.contains(ip),
    log: d.log,
  });
  d.broker.onClientGone((clientId) => ports.clientGone(clientId));
  return { files, ports };
}
