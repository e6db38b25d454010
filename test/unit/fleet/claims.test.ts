/**
 * Fleet claims that must change nothing (protocol/fleet-client.ts, the
 * shipped ACLs in docs/fleet/): on one real Mosquitto, a controller
 * (mallory) forges a claim of alice's queued request, removes or replaces
 * her queue entry, and queues a request whose claims would land in alice's
 * reply namespace; a host sends garbage claims. The broker refuses what the
 * ACL does not grant, alice's requester refuses what its schema does not
 * take, and the request is placed once, on the host that really claimed it.
 * The hosts are plain MQTT clients logged in as hosts (the whole protocol
 * with real mvirtd hosts is placement.test.ts). About 1 s.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { createFleetRequester, type FleetRequester } from '../../../protocol/fleet-client.js';
import { FleetRequest } from '../../../protocol/fleet.js';
import { hasMosquitto, startMosquitto, type MosquittoBroker } from '../../../harness/mosquitto.js';

const HOSTS = { h1: 'pw-1', h2: 'pw-2' };
const CONTROLLERS = { alice: 'pw-alice', mallory: 'pw-mallory' };
const skip = hasMosquitto() ? false : 'mosquitto is not installed (scripts/install-deps.sh)';

interface Seen {
  topic: string;
  payload: Buffer;
}

describe('fleet claims a controller forges or a host garbles', { skip }, () => {
  let broker: MosquittoBroker;
  const conns: MqttClient[] = [];
  let alice: FleetRequester;
  let mallory: MqttClient;
  let h1: MqttClient;
  /** What each host was sent (its rpc topics) and what h1 saw of the queue. */
  const rpcs: Record<'h1' | 'h2', Seen[]> = { h1: [], h2: [] };
  const queue: Seen[] = [];
  const waiters: (() => void)[] = [];
  const until = async (cond: () => boolean, what: string): Promise<void> => {
    const t0 = Date.now();
    while (!cond()) {
      if (Date.now() - t0 > 20_000) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
  };
  const seen = (list: Seen[]) => (topic: string, payload: Buffer) => {
    list.push({ topic, payload });
    for (const w of waiters.splice(0)) w();
  };

  async function connect(port: number, username: string, password: string, clientId: string) {
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
      username,
      password,
      clientId,
      reconnectPeriod: 0,
    });
    conns.push(c);
    return c;
  }

  before(async () => {
    broker = await startMosquitto({ hosts: HOSTS, controllers: CONTROLLERS });
    h1 = await connect(broker.hostsPort, 'h1', HOSTS.h1, 'h1');
    const h2 = await connect(broker.hostsPort, 'h2', HOSTS.h2, 'h2');
    h1.on('message', (topic, payload) =>
      seen(topic.startsWith('mvirt/_fleet/') ? queue : rpcs.h1)(topic, payload),
    );
    h2.on('message', seen(rpcs.h2));
    await h1.subscribeAsync(['mvirt/_fleet/queue/#', 'mvirt/h1/rpc/#'], { qos: 1 });
    await h2.subscribeAsync('mvirt/h2/rpc/#', { qos: 1 });
    const a = await connect(broker.controllersPort, 'alice', CONTROLLERS.alice, 'alice-1');
    alice = await createFleetRequester({ mqtt: a, prefix: 'mvirt', clientId: 'alice-1' });
    mallory = await connect(broker.controllersPort, 'mallory', CONTROLLERS.mallory, 'mallory-1');
  });

  after(async () => {
    await alice?.close();
    for (const c of conns) await c.endAsync(true).catch(() => undefined);
    await broker?.close();
  });

  test('forged claims and queue entries are refused; the request is placed once, where it was claimed', async () => {
    const placing = alice.request('job.run', { argv: ['true'] }, { timeoutMs: 30_000 });
    await until(() => queue.length > 0, "alice's request in the queue");
    const entry = queue[0]!;
    assert.match(entry.topic, /^mvirt\/_fleet\/queue\/alice-1\/f-[0-9a-f]+$/);
    const req = FleetRequest.parse(JSON.parse(entry.payload.toString()));
    const at = new Date().toISOString();

    // mallory, a controller: a claim naming h2, into alice's reply namespace.
    await mallory.publishAsync(req.claimTo, JSON.stringify({ request: req.id, hostId: 'h2', at }), {
      qos: 1,
    });
    // Her queue entry removed, and one of mallory's put in her name.
    await mallory.publishAsync(entry.topic, Buffer.alloc(0), { qos: 1, retain: true });
    const forged = { ...req, id: 'f-forged', params: { argv: ['rm', '-rf', '/'] } };
    await mallory.publishAsync('mvirt/_fleet/queue/alice-1/f-forged', JSON.stringify(forged), {
      qos: 1,
      retain: true,
    });
    // mallory's own request, whose claims would go to alice: the broker takes it
    // (her namespace), every host refuses to claim it (taker.test.ts, "not its own").
    const own = { ...req, id: 'f-own', claimTo: req.claimTo };
    await mallory.publishAsync('mvirt/_fleet/queue/mallory-1/f-own', JSON.stringify(own), {
      qos: 1,
      retain: true,
    });

    // A host's garbage: what alice's schema refuses (each would place the request on h2).
    for (const bad of [
      'not json',
      JSON.stringify({ request: req.id, hostId: 'h2' }),
      JSON.stringify({ request: req.id, hostId: 'h2', at, extra: 1 }),
      JSON.stringify({ request: req.id, hostId: '', at }),
      JSON.stringify({ request: req.id, hostId: 'h2'.repeat(40), at }),
      JSON.stringify({ request: [req.id], hostId: 'h2', at }),
      JSON.stringify([{ request: req.id, hostId: 'h2', at }]),
    ])
      await h1.publishAsync(req.claimTo, bad, { qos: 1 });
    // A claim of a request alice never made.
    await h1.publishAsync(req.claimTo, JSON.stringify({ request: 'f-nope', hostId: 'h2', at }), {
      qos: 1,
    });
    // Then h1's real claim, after all of the above on every path to alice.
    await h1.publishAsync(req.claimTo, JSON.stringify({ request: req.id, hostId: 'h1', at }), {
      qos: 1,
    });

    await until(() => rpcs.h1.length > 0, 'the request sent to h1');
    const rpc = JSON.parse(rpcs.h1[0]!.payload.toString()) as {
      id: string;
      replyTo: string;
      params: { argv: string[] };
    };
    assert.equal(rpcs.h1[0]!.topic, 'mvirt/h1/rpc/job.run');
    assert.deepEqual(rpc.params.argv, ['true'], "alice's own params, not mallory's");
    await h1.publishAsync(
      rpc.replyTo,
      JSON.stringify({ id: rpc.id, ok: true, result: { jobId: 'job-000000000001' } }),
      { qos: 1 },
    );
    const placed = await placing;
    assert.equal(placed.hostId, 'h1');
    assert.equal(placed.attempts, 1);

    // The queue as h1 saw it: alice's entry, then her own clearing of it once placed.
    await until(() => queue.length > 2, "alice's entry cleared");
    assert.deepEqual(
      queue.map((q) => [q.topic, q.payload.length > 0]),
      [
        [entry.topic, true],
        ['mvirt/_fleet/queue/mallory-1/f-own', true],
        [entry.topic, false],
      ],
      "nothing of mallory's reached alice's part of the queue",
    );
    assert.equal(rpcs.h1.length, 1, 'placed once');
    assert.deepEqual(rpcs.h2, [], 'no forged or garbled claim sent anything to h2');
  });
});
