/** The port.* methods: thin adapters onto the port forwards (host/ports/forwards.ts). */
import type { MutatingMethod } from '../../../protocol/plan.js';
import type { PortForwards } from '../../ports/forwards.js';
import { createPlan } from '../../plan.js';
import type { Handlers, Planners } from '../types.js';

export interface PortHandlerDeps {
  ports: PortForwards;
}

type PortMethods = 'port.forward' | 'port.list' | 'port.close';

export const portHandlers = ({ ports }: PortHandlerDeps): Handlers<PortMethods> => ({
  'port.forward': (p) => ports.forward(p),
  'port.list': () => ({ forwards: ports.list() }),
  'port.close': (p) => ports.close(p.id),
});

export const portPlanners = ({
  ports,
}: PortHandlerDeps): Planners<Extract<PortMethods, MutatingMethod>> => ({
  'port.forward': (p) => {
    const { vm, address } = ports.check(p);
    const b = createPlan('port.forward');
    b.admit(`VM ${vm.name} is ${vm.state}; ${address} is an address you may listen on`);
    b.step(`listen on ${address}:${p.hostPort ?? 0}`);
    b.step(`carry each connection to 127.0.0.1:${p.guestPort} in the guest`);
    b.agent('port', { op: 'open', port: p.guestPort });
    b.change(`event: audit "port forward …: ${address}:… → ${vm.name}:${p.guestPort} opened"`);
    return b.done();
  },
  'port.close': (p) => {
    const f = ports.get(p.id);
    const b = createPlan('port.close');
    b.admit(`forward ${f.id} exists (${f.connections} connections open)`);
    b.step(`stop listening on ${f.address}:${f.port} and drop its connections`);
    b.change(`event: audit "port forward ${f.id} … closed"`);
    return b.done();
  },
});
