/**
 * What a scripted agent (fake VMs in tests, simulated agents in benches) says
 * once its MQTT session is up: subscribe to its down topics, then hello and
 * ready, as mvirt-agent does. A raw MQTT client speaking the agent protocol,
 * where the real agent core is more than the test or bench needs.
 */
import type { MqttClient } from 'mqtt';
import { AGENT_PROTOCOL_VERSION, type BootTimeline } from '../protocol/agent.js';
import { encodeCbor } from '../protocol/codec.js';

export function greetAsAgent(
  client: MqttClient,
  a: { root: string; vmId: string; name: string; boot: BootTimeline; readyAt: number },
): void {
  const up = (kind: string) => `${a.root}/agent/${a.vmId}/up/${kind}`;
  client.subscribe(`${a.root}/agent/${a.vmId}/down/+`, { qos: 1 }, () => {
    client.publish(
      up('hello'),
      encodeCbor({
        protocol: AGENT_PROTOCOL_VERSION,
        agentVersion: `${a.name}-1`,
        kernel: a.name,
        hostname: a.vmId,
        pid: 1,
        boot: a.boot,
        jobs: [],
      }),
    );
    client.publish(up('ready'), encodeCbor({ at: a.readyAt }));
  });
}
