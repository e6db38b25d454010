/**
 * The scripted agents of the fake hypervisor (fake-vms.ts), modes 'ready',
 * 'silent' and 'garbage': an in-process MQTT client on the socket the daemon
 * opened to the VM's agent socket, speaking through the daemon's broker as
 * mvirt-agent does (or failing to, on purpose).
 */
import type net from 'node:net';
import { MqttClient } from 'mqtt';
import { decodeCbor, encodeCbor } from '../protocol/codec.js';
import { greetAsAgent } from './agent-greeting.js';
import type { AgentMode, FakeHypervisor, FakeVm } from './fake-vm-types.js';

/** Answer the daemon on `sock` as an agent in `mode` (not 'real'); what comes down lands in `onDown`. */
export function startAgent(
  vm: FakeVm,
  sock: net.Socket,
  mode: AgentMode,
  onDown: FakeHypervisor['received'],
): void {
  const up = (kind: string) => `${vm.root}/agent/${vm.vmId}/up/${kind}`;
  const client = new MqttClient(() => sock, {
    clientId: `agent-${vm.vmId}`,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  vm.agents.add(client);
  client.on('error', () => undefined);
  client.on('close', () => vm.agents.delete(client));
  client.on('connect', () => {
    if (mode === 'silent') return;
    if (mode === 'garbage') {
      client.publish(up('hello'), Buffer.from([0xff, 0x00, 0x13]));
      client.publish(up('hello'), encodeCbor({ protocol: 'x' }));
      client.publish(up('ready'), encodeCbor({ at: 1, extra: true }));
      return;
    }
    greetAsAgent(client, {
      root: vm.root,
      vmId: vm.vmId,
      name: 'fake',
      boot: { initS: 0.1, agentStartS: 0.2, connectedS: 0.3 },
      readyAt: 0.4,
    });
  });
  client.on('message', (topic, payload) => {
    const kind = topic.split('/').pop()!;
    const msg = decodeCbor(payload) as { id?: string; action?: string };
    onDown.push({ vmId: vm.vmId, kind, msg });
    if (kind === 'power' && msg.id) {
      client.publish(up('reply'), encodeCbor({ id: msg.id, ok: true }), () => {
        if (msg.action === 'poweroff') {
          try {
            process.kill(vm.pid, 'SIGHUP');
          } catch {
            /* gone */
          }
        }
      });
    }
  });
}
