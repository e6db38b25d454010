/**
 * Authorisation bench (issue 11 target): delivery to 50 subscribers of mixed
 * scopes with per-message authorisation ÷ without, in messages per second
 * (≤ 1.2: the check may cost at most a fifth of the throughput).
 *
 *  - with: mvirtd's broker; 40 subscribers scoped to one of 5 labels (8 each)
 *    and 10 unscoped, all subscribed to `<root>/vm/+/state`; every delivery
 *    goes through authorizeForward (acl.ts), which looks up the VM's owner.
 *  - without: plain aedes with no hooks; the same 50 subscribers get the same
 *    deliveries from subscriptions alone (a scoped one subscribes to its own
 *    4 VMs' topics, an unscoped one to `+`).
 *
 * The daemon publishes 20 VMs' states round robin; a run ends when every
 * expected delivery has arrived. Best of three runs each.
 */
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createBroker, hashPassword } from '../host/broker/index.js';
import { silentLogger } from '../host/log.js';
import { round, type BenchRow } from './lib.js';

const ROOT = 'mvirt/bench';
const SCOPES = ['s0', 's1', 's2', 's3', 's4'];
const VMS = Array.from({ length: 20 }, (_, i) => `vm-${i}`);
const ownerOf = (vm: string): string => SCOPES[Number(vm.slice(3)) % SCOPES.length]!;
const MESSAGES = 4000;
const PAYLOAD = JSON.stringify({ id: 'vm-x', name: 'web', state: 'ready', vcpus: 1 });

interface Sub {
  scope: string | null;
  client: mqtt.MqttClient;
}

/** 40 scoped (8 per label) and 10 unscoped subscribers. */
const layout = (): Array<string | null> => [
  ...SCOPES.flatMap((s) => Array.from({ length: 8 }, () => s)),
  ...Array.from({ length: 10 }, () => null),
];

const expectedDeliveries = (subs: Sub[]): number =>
  subs.reduce((n, s) => n + (s.scope === null ? MESSAGES : MESSAGES / SCOPES.length), 0);

async function measure(
  subs: Sub[],
  publish: (topic: string, payload: Buffer) => Promise<void>,
): Promise<number> {
  const want = expectedDeliveries(subs);
  let got = 0;
  let done: () => void = () => undefined;
  const all = new Promise<void>((resolve) => (done = resolve));
  const onMessage = (): void => {
    if (++got === want) done();
  };
  for (const s of subs) s.client.on('message', onMessage);
  const payload = Buffer.from(PAYLOAD);
  const t0 = performance.now();
  for (let i = 0; i < MESSAGES; i++) {
    await publish(`${ROOT}/vm/${VMS[i % VMS.length]!}/state`, payload);
  }
  await all;
  const s = (performance.now() - t0) / 1000;
  for (const sub of subs) sub.client.off('message', onMessage);
  return MESSAGES / s;
}

async function withAuthorisation(): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-bench-authz-'));
  const passwordHash = await hashPassword('pw', { N: 1024, r: 8, p: 1 });
  const broker = await createBroker(
    {
      root: ROOT,
      listen: '127.0.0.1:0',
      unixPath: false,
      dataDir: dir,
      users: [
        { username: 'all', passwordHash, role: 'viewer' },
        ...SCOPES.map((s) => ({ username: s, passwordHash, role: 'viewer' as const, scope: s })),
      ],
      ownerOf: (kind, id) => (kind === 'vm' && id.startsWith('vm-') ? ownerOf(id) : null),
    },
    silentLogger(),
  );
  const subs: Sub[] = [];
  try {
    let n = 0;
    for (const scope of layout()) {
      const client = await mqtt.connectAsync(`mqtt://${broker.addresses.tcp}`, {
        clientId: `sub-${++n}`,
        username: scope ?? 'all',
        password: 'pw',
        protocolVersion: 4,
        reconnectPeriod: 0,
      });
      await client.subscribeAsync(`${ROOT}/vm/+/state`);
      subs.push({ scope, client });
    }
    let best = 0;
    for (let r = 0; r < 3; r++)
      best = Math.max(best, await measure(subs, (t, p) => broker.publish(t, p)));
    return best;
  } finally {
    await Promise.all(subs.map((s) => s.client.endAsync(true)));
    await broker.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function withoutAuthorisation(): Promise<number> {
  const aedes = await Aedes.createBroker();
  const server = net.createServer((s) => aedes.handle(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const subs: Sub[] = [];
  try {
    let n = 0;
    for (const scope of layout()) {
      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
        clientId: `sub-${++n}`,
        protocolVersion: 4,
        reconnectPeriod: 0,
      });
      const filters =
        scope === null
          ? [`${ROOT}/vm/+/state`]
          : VMS.filter((v) => ownerOf(v) === scope).map((v) => `${ROOT}/vm/${v}/state`);
      await client.subscribeAsync(filters);
      subs.push({ scope, client });
    }
    const publish = (topic: string, payload: Buffer): Promise<void> =>
      new Promise((resolve, reject) =>
        aedes.publish(
          { cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    let best = 0;
    for (let r = 0; r < 3; r++) best = Math.max(best, await measure(subs, publish));
    return best;
  } finally {
    await Promise.all(subs.map((s) => s.client.endAsync(true)));
    await new Promise<void>((r) => aedes.close(() => r()));
    await new Promise((r) => server.close(r));
  }
}

export default async function bench(): Promise<BenchRow[]> {
  const without = await withoutAuthorisation();
  const withAuth = await withAuthorisation();
  const ratio = without / withAuth;
  return [
    {
      name: '50 mixed-scope subscribers, no authorisation',
      value: round(without, 0),
      unit: 'msg/s',
    },
    {
      name: '50 mixed-scope subscribers, per-message authorisation',
      value: round(withAuth, 0),
      unit: 'msg/s',
    },
    {
      name: 'delivery without ÷ with per-message authorisation',
      value: round(ratio, 2),
      unit: 'ratio',
      ratio,
      target: '<= 1.2',
      note: `${MESSAGES} messages over ${VMS.length} VMs, ${SCOPES.length} scopes, best of 3`,
    },
  ];
}
