/**
 * Simulated guest agents for the telemetry bench, in their own process so the
 * daemon's CPU time is the daemon's alone. For each VM the bench launches, it
 * serves the VM's agent socket; on the daemon's connection it speaks MQTT as
 * mvirt-agent does (hello, ready, replies to power requests) and publishes
 * CBOR telemetry at the asked interval. It can also run one subscriber of
 * `vm/+/telemetry`, as a dashboard would. Driven over IPC by bench/telemetry.ts.
 */
import { brokerOptions } from '../../protocol/client.js';
import net from 'node:net';
import mqtt, { MqttClient } from 'mqtt';
import type { Telemetry } from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';
import { greetAsAgent } from '../../harness/agent-greeting.js';

export type SimRequest =
  | { type: 'serve'; vmId: string; sock: string; root: string }
  | { type: 'telemetry'; intervalMs: number }
  /** `perAgent` samples from every agent, back to back; answered once the subscriber got them all. */
  | { type: 'flood'; perAgent: number }
  | { type: 'watch'; url: string; filter: string }
  | { type: 'count' };

export type SimReply =
  | { type: 'served'; vmId: string }
  | { type: 'ok' }
  | { type: 'count'; received: number; sent: number };

interface Agent {
  vmId: string;
  root: string;
  client: MqttClient | null;
  n: number;
}

const agents = new Map<string, Agent>();
let intervalMs = 0;
let timer: NodeJS.Timeout | undefined;
let sent = 0;
let received = 0;
/** Waiting for the subscriber to reach a count (a flood's end). */
let awaited: { count: number; then: () => void } | null = null;

const reply = (r: SimReply): void => void process.send!(r);

/** A plausible guest sample: two filesystems, two interfaces, figures that move. */
function sample(a: Agent): Telemetry {
  a.n++;
  return {
    at: Date.now(),
    cpuPercent: 5 + (a.n % 20),
    memUsedMiB: 40 + (a.n % 7),
    memTotalMiB: 235.4,
    load1: 0.1,
    load5: 0.05,
    load15: 0.01,
    uptimeS: 100 + a.n,
    procs: 12,
    disk: [
      { mount: '/', totalBytes: 64 << 20, usedBytes: 48 << 20 },
      { mount: '/tmp', totalBytes: 128 << 20, usedBytes: a.n * 4096 },
    ],
    net: [
      { iface: 'lo', rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 },
      { iface: 'eth0', rxBytes: a.n * 1500, txBytes: a.n * 800, rxPackets: a.n, txPackets: a.n },
    ],
  };
}

function setTelemetry(ms: number): void {
  intervalMs = ms;
  clearInterval(timer);
  if (ms <= 0) return;
  // Spread over the interval like independent guests, and on schedule: a
  // late timer (a busy machine) sends what is due rather than fewer messages.
  const t0 = performance.now();
  let done = 0;
  let next = 0;
  timer = setInterval(
    () => {
      const all = [...agents.values()].filter((a) => a.client?.connected);
      if (all.length === 0) return;
      const due = Math.floor(((performance.now() - t0) * all.length) / ms) - done;
      for (let k = 0; k < due; k++) {
        const a = all[next++ % all.length]!;
        a.client!.publish(`${a.root}/agent/${a.vmId}/up/telemetry`, encodeCbor(sample(a)), {
          qos: 0,
        });
        sent++;
        done++;
      }
    },
    ms / Math.max(1, agents.size),
  );
}

function speak(a: Agent, sock: net.Socket): void {
  const up = (kind: string): string => `${a.root}/agent/${a.vmId}/up/${kind}`;
  const client = new MqttClient(() => sock, {
    clientId: `agent-${a.vmId}`,
    protocolVersion: 4,
    reconnectPeriod: 0,
    keepalive: 60,
  });
  a.client = client;
  client.on('error', () => undefined);
  client.on('connect', () => {
    greetAsAgent(client, {
      root: a.root,
      vmId: a.vmId,
      name: 'sim',
      boot: { initS: 0.5, agentStartS: 0.9, connectedS: 1.2 },
      readyAt: 1.3,
    });
  });
  client.on('message', (topic, payload) => {
    const msg = decodeCbor(payload) as { id?: string };
    if (topic.endsWith('/down/power') && msg.id)
      client.publish(up('reply'), encodeCbor({ id: msg.id, ok: true }));
  });
}

process.on('message', (m: SimRequest) => {
  if (m.type === 'serve') {
    const a: Agent = { vmId: m.vmId, root: m.root, client: null, n: 0 };
    agents.set(m.vmId, a);
    const server = net.createServer((s) => speak(a, s));
    server.listen(m.sock, () => reply({ type: 'served', vmId: m.vmId }));
    if (intervalMs > 0) setTelemetry(intervalMs);
  } else if (m.type === 'telemetry') {
    setTelemetry(m.intervalMs);
    reply({ type: 'ok' });
  } else if (m.type === 'watch') {
    // The daemon's unix socket (`unix://`, anonymous) or a URL mqtt.js knows.
    const b = brokerOptions(m.url);
    const o = { ...b.opts, protocolVersion: 4 as const, clientId: 'sim-dashboard' };
    const c = b.url ? mqtt.connect(b.url, o) : mqtt.connect(o);
    c.on('message', () => {
      received++;
      if (awaited && received >= awaited.count) {
        const w = awaited;
        awaited = null;
        w.then();
      }
    });
    c.on('connect', () => c.subscribe(m.filter, { qos: 0 }, () => reply({ type: 'ok' })));
  } else if (m.type === 'flood') {
    awaited = { count: received + m.perAgent * agents.size, then: () => reply({ type: 'ok' }) };
    for (let k = 0; k < m.perAgent; k++)
      for (const a of agents.values()) {
        a.client?.publish(`${a.root}/agent/${a.vmId}/up/telemetry`, encodeCbor(sample(a)), {
          qos: 0,
        });
        sent++;
      }
  } else if (m.type === 'count') {
    reply({ type: 'count', received, sent });
  }
});
process.on('disconnect', () => process.exit(0));
