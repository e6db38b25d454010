/**
 * Fleet placement by the hosts (docs/fleet.md, "Placing work on the fleet"):
 * two real Mosquittos bridged, three mvirtd processes (own data dirs, fake VMs
 * running the real agent core), controllers on either broker putting
 * `job.run` into the fleet queue. Costs about 30–40 s on the idle 2-core
 * machine, most of it the 60 jobs' fake VM boots and the host restarts.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { createFleetRequester, type FleetRequester } from '../../../protocol/fleet-client.js';
import type { HostStatus, JobRecord } from '../../../protocol/rpc.js';
import { TERMINAL } from '../../../harness/client.js';
import { hasMosquitto, startMosquitto, type MosquittoBroker } from '../../../harness/mosquitto.js';
import { makeTempDir, removeDir, REPO } from '../../../harness/paths.js';
import { runCli } from '../../../host/cli/run.js';
import { memoryIo } from '../../support/cli-io.js';

const KEEPALIVE_S = 2;
const HOSTS: Record<string, { pw: string; maxVms: number }> = {
  h1: { pw: 'pw-1', maxVms: 4 },
  h2: { pw: 'pw-2', maxVms: 2 },
  h3: { pw: 'pw-3', maxVms: 2 },
};
const CONTROLLERS: Record<string, string> = { alice: 'pw-alice', bob: 'pw-bob' };
const skip = hasMosquitto() ? false : 'mosquitto is not installed (scripts/install-deps.sh)';

interface Host {
  child: ChildProcess;
  exited: Promise<unknown>;
  dataDir: string;
}

describe('fleet placement by the hosts, across a bridged pair of Mosquittos', { skip }, () => {
  let a: MosquittoBroker;
  let b: MosquittoBroker;
  let tmp: string;
  const hosts = new Map<string, Host>();
  const conns: MqttClient[] = [];
  let alice: FleetRequester;
  let bob: FleetRequester;
  let watch: MqttClient;
  /** Every job state and output seen on broker A, by `<host>/<jobId>`. */
  const jobs = new Map<string, JobRecord>();
  const stdout = new Map<string, string>();
  const statuses = new Map<string, HostStatus>();
  const changed: (() => void)[] = [];
  const until = async (cond: () => boolean, what: string, ms = 60_000): Promise<void> => {
    const t0 = Date.now();
    while (!cond()) {
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        changed.push(resolve);
        setTimeout(resolve, 500).unref();
      });
    }
  };

  const brokerOf = (id: string): MosquittoBroker => (id === 'h1' ? a : b);

  async function startHost(id: string): Promise<Host> {
    const dataDir = hosts.get(id)?.dataDir ?? (await makeTempDir(`mvirt-fleet-${id}-`));
    const cred = path.join(tmp, `${id}.json`);
    await writeFile(cred, JSON.stringify({ username: id, password: HOSTS[id]!.pw }));
    await chmod(cred, 0o600);
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(REPO, 'harness/fleet-host.ts'),
        '--data-dir',
        dataDir,
        '--host-id',
        id,
        '--uplink',
        `mqtt://127.0.0.1:${brokerOf(id).hostsPort}`,
        '--uplink-credentials',
        cred,
        '--uplink-keepalive-s',
        String(KEEPALIVE_S),
        '--max-vms',
        String(HOSTS[id]!.maxVms),
        '--no-templates',
        '--spares',
        '0',
        '--job-agent-grace-ms',
        '3000',
        '--status-interval-ms',
        '1000',
        '--label',
        `gpu=${id === 'h2'}`,
      ],
      { cwd: REPO, env, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = once(child, 'exit');
    const [line] = (await Promise.race([
      once(child.stdout!, 'data'),
      exited.then(() => {
        throw new Error(`host ${id} exited before it was ready`);
      }),
    ])) as [Buffer];
    assert.match(line.toString(), /"ready":true/);
    const h = { child, exited, dataDir };
    hosts.set(id, h);
    await until(
      () => statuses.get(id)?.online === true && statuses.get(id)?.uplink?.connected === true,
      `${id} online`,
    );
    return h;
  }

  async function connect(broker: MosquittoBroker, user: 'alice' | 'bob', clientId: string) {
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.controllersPort}`, {
      username: user,
      password: CONTROLLERS[user],
      clientId,
      reconnectPeriod: 500,
    });
    conns.push(c);
    return c;
  }

  const cliEnv = (broker: MosquittoBroker) => ({
    MVIRT_BROKER: `mqtt://127.0.0.1:${broker.controllersPort}`,
    MVIRT_USER: 'alice',
    MVIRT_PASSWORD: CONTROLLERS.alice!,
  });

  /** Call a method of one host from alice's connection on A (cancel, logs). */
  async function call(hostId: string, method: string, params: unknown): Promise<unknown> {
    const m = memoryIo({ env: cliEnv(a) });
    const args =
      method === 'job.cancel'
        ? ['--host', hostId, 'job', 'cancel', (params as { jobId: string }).jobId]
        : [];
    assert.equal(await runCli(args, m), 0, m.errText());
    return m.out();
  }

  const finished = (key: string): boolean =>
    (TERMINAL as readonly string[]).includes(jobs.get(key)?.state ?? 'queued');

  before(async () => {
    tmp = await makeTempDir('mvirt-fleetq-');
    const hostUsers = Object.fromEntries(Object.entries(HOSTS).map(([k, v]) => [k, v.pw]));
    a = await startMosquitto({
      hosts: hostUsers,
      controllers: CONTROLLERS,
      bridges: { 'bridge-b': 'pw-bridge' },
    });
    b = await startMosquitto({
      hosts: hostUsers,
      controllers: CONTROLLERS,
      bridgeTo: { port: a.bridgesPort, username: 'bridge-b', password: 'pw-bridge' },
    });
    watch = await connect(a, 'alice', 'watcher');
    watch.on('message', (topic, payload) => {
      const parts = topic.split('/');
      if (parts[2] === 'status' && payload.length > 0)
        statuses.set(parts[1]!, JSON.parse(payload.toString()) as HostStatus);
      else if (parts[2] === 'job' && parts[4] === 'state' && payload.length > 0)
        jobs.set(`${parts[1]}/${parts[3]}`, JSON.parse(payload.toString()) as JobRecord);
      else if (parts[2] === 'job' && parts[4] === 'output') {
        const o = JSON.parse(payload.toString()) as { stream: string; data: string };
        const key = `${parts[1]}/${parts[3]}`;
        if (o.stream === 'stdout') stdout.set(key, (stdout.get(key) ?? '') + o.data);
      }
      for (const w of changed.splice(0)) w();
    });
    await watch.subscribeAsync(['mvirt/+/status', 'mvirt/+/job/+/state', 'mvirt/+/job/+/output'], {
      qos: 1,
    });
    await Promise.all(Object.keys(HOSTS).map((id) => startHost(id)));
    alice = await createFleetRequester({
      mqtt: await connect(a, 'alice', 'alice-q'),
      prefix: 'mvirt',
      clientId: 'alice-q',
    });
    bob = await createFleetRequester({
      mqtt: await connect(b, 'bob', 'bob-q'),
      prefix: 'mvirt',
      clientId: 'bob-q',
    });
  });

  after(async () => {
    await alice?.close();
    await bob?.close();
    for (const c of conns) await c.endAsync(true).catch(() => undefined);
    for (const h of hosts.values()) {
      if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill('SIGTERM');
      await h.exited;
      // Fake guests and blockers outlive a kill -9 (as hypervisors do): end them.
      for (const f of ['fake-pids', 'job-pids'])
        for (const pid of (await readFile(path.join(h.dataDir, f), 'utf8').catch(() => '')).split(
          '\n',
        ))
          if (pid)
            try {
              process.kill(Number(pid), 'SIGKILL');
            } catch {
              /* gone */
            }
      await removeDir(h.dataDir);
    }
    await b?.close();
    await a?.close();
    await removeDir(tmp);
  });

  test('every host is seen online from both brokers (mvirt hosts)', async () => {
    for (const broker of [a, b]) {
      const m = memoryIo({ env: cliEnv(broker) });
      assert.equal(await runCli(['hosts', '--json'], m), 0, m.errText());
      const hs = JSON.parse(m.out()) as HostStatus[];
      assert.deepEqual(
        hs.map((h) => [h.hostId, h.online]),
        [
          ['h1', true],
          ['h2', true],
          ['h3', true],
        ],
      );
    }
    const q = memoryIo({ env: cliEnv(a) });
    assert.equal(await runCli(['hosts', '--queue'], q), 0, q.errText());
    assert.equal(q.out(), 'the fleet queue is empty\n');
  });

  test('60 fleet jobs from controllers on both brokers: spread by room, each run once, with its output', async (t) => {
    const placed = await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        (i % 2 ? bob : alice).request('job.run', { argv: ['echo', `fleet-${i}`] }),
      ),
    );
    const keys = placed.map((p) => `${p.hostId}/${p.result.jobId}`);
    assert.equal(new Set(keys).size, 60);
    await until(() => keys.every(finished), 'every job finished');
    const perHost: Record<string, number> = {};
    keys.forEach((k, i) => {
      assert.equal(jobs.get(k)!.state, 'succeeded', k);
      assert.equal(stdout.get(k), `fleet-${i}\n`, k);
      const h = k.split('/')[0]!;
      perHost[h] = (perHost[h] ?? 0) + 1;
    });
    // Run once: no other job with these argv on any host.
    const ran = [...jobs.values()].filter((j) => j.argv[1]?.startsWith('fleet-'));
    assert.equal(ran.length, 60);
    t.diagnostic(`jobs per host (max VMs h1 4, h2 2, h3 2): ${JSON.stringify(perHost)}`);
    for (const id of Object.keys(HOSTS))
      assert.ok((perHost[id] ?? 0) >= 5, `${id} ran ${perHost[id]}`);
    assert.ok(perHost.h1! > perHost.h2! && perHost.h1! > perHost.h3!, JSON.stringify(perHost));
  });

  test('labels and a host asked for: only those hosts claim; vm.create through the fleet, from the CLI too', async () => {
    const gpu = await Promise.all(
      [0, 1, 2].map((i) =>
        alice.request(
          'job.run',
          { argv: ['echo', `gpu-${i}`] },
          { need: { labels: { gpu: 'true' } } },
        ),
      ),
    );
    for (const [i, p] of gpu.entries()) {
      assert.equal(p.hostId, 'h2');
      const k = `h2/${p.result.jobId}`;
      await until(() => finished(k), k);
      assert.equal(stdout.get(k), `gpu-${i}\n`);
    }
    const pinned = await bob.request('vm.create', { name: 'pinned' }, { need: { host: 'h3' } });
    assert.equal(pinned.hostId, 'h3');
    assert.equal(pinned.result.name, 'pinned');
    assert.equal(pinned.result.state, 'stopped');
    const m = memoryIo({ env: cliEnv(b) });
    assert.equal(
      await runCli(['vm', 'create', 'labelled', '--fleet', '--label', 'gpu=false', '--json'], m),
      0,
      m.errText(),
    );
    assert.match(m.errText(), /created on h[13]\n/);
    assert.equal((JSON.parse(m.out()) as { name: string }).name, 'labelled');
  });

  test('kill -9 of a host: offline within 1.5 × keepalive, queued jobs run elsewhere, its running jobs end lost', async (t) => {
    const pidFile = (h: string) => path.join(hosts.get(h)!.dataDir, 'job-pids');
    const blocker = (h: string) => ({
      argv: ['sh', '-c', `echo $$ >> ${pidFile(h)}; exec sleep 600`],
    });
    // Fill every host (room for 8), pinned with need.host so the test knows where.
    const blockers = await Promise.all(
      Object.entries(HOSTS).flatMap(([id, h]) =>
        Array.from({ length: h.maxVms }, () =>
          alice.request('job.run', blocker(id), { need: { host: id } }),
        ),
      ),
    );
    const blockKeys = blockers.map((p) => `${p.hostId}/${p.result.jobId}`);
    await until(() => blockKeys.every((k) => jobs.get(k)?.state === 'running'), 'blockers running');
    // Two more wait in the visible queue.
    let queuedSaid = 0;
    const waiting = [0, 1].map((i) =>
      bob.request('job.run', { argv: ['echo', `after-${i}`] }, { onQueued: () => queuedSaid++ }),
    );
    await until(() => queuedSaid === 2, 'both reported queued');
    const q = memoryIo({ env: cliEnv(a) });
    assert.equal(await runCli(['hosts', '--queue', '--json'], q), 0, q.errText());
    const queue = JSON.parse(q.out()) as { clientId: string; method: string }[];
    assert.deepEqual(
      queue.map((r) => [r.clientId, r.method]),
      [
        ['bob-q', 'job.run'],
        ['bob-q', 'job.run'],
      ],
    );

    const t0 = performance.now();
    hosts.get('h3')!.child.kill('SIGKILL');
    await until(() => statuses.get('h3')?.online === false, 'h3 offline');
    const ms = performance.now() - t0;
    assert.ok(ms <= 1500 * KEEPALIVE_S, `offline after ${Math.round(ms)} ms`);
    t.diagnostic(`kill -9 → offline on the other broker after ${Math.round(ms)} ms`);
    // Room on h1: the queued jobs run there (h3 is gone, h2 is full).
    for (const k of blockKeys.filter((k) => k.startsWith('h1/')))
      await call('h1', 'job.cancel', { jobId: k.split('/')[1] });
    const after = await Promise.all(waiting);
    for (const [i, p] of after.entries()) {
      assert.equal(p.hostId, 'h1');
      const k = `h1/${p.result.jobId}`;
      await until(() => finished(k), k);
      assert.equal(stdout.get(k), `after-${i}\n`);
    }
    // h3 comes back: its running jobs ended with their agents (in its process): lost.
    await startHost('h3');
    const h3Keys = blockKeys.filter((k) => k.startsWith('h3/'));
    await until(() => h3Keys.every((k) => jobs.get(k)?.state === 'lost'), 'h3 jobs lost');
    for (const k of blockKeys.filter((k) => k.startsWith('h2/')))
      await call('h2', 'job.cancel', { jobId: k.split('/')[1] });
  });

  test('broker B restarts: its hosts reconnect and republish; no job lost or run twice', async (t) => {
    const n = 16;
    const placing = Array.from({ length: n }, (_, i) =>
      alice.request('job.run', { argv: ['sh', '-c', `sleep 1; echo restart-${i}`] }),
    );
    // Some are accepted and running, the rest wait in the queue: then B goes away.
    await until(
      () =>
        [...jobs.values()].filter((j) => j.argv[2]?.includes('restart-') && j.state === 'running')
          .length >= 3,
      'running',
    );
    const t0 = performance.now();
    await b.stop();
    await b.restart();
    await until(
      () =>
        ['h2', 'h3'].every(
          (h) =>
            statuses.get(h)?.online === true && Date.parse(statuses.get(h)!.at) > Date.now() - 2000,
        ),
      'h2 and h3 back',
    );
    t.diagnostic(
      `B restarted; its hosts online again on A after ${Math.round(performance.now() - t0)} ms`,
    );
    const placed = await Promise.all(placing);
    const keys = placed.map((p) => `${p.hostId}/${p.result.jobId}`);
    await until(() => keys.every(finished), 'every job finished');
    for (const k of keys) assert.equal(jobs.get(k)!.state, 'succeeded', k);
    const ran = [...jobs.values()].filter((j) => j.argv[2]?.includes('restart-'));
    assert.equal(ran.length, n, 'each request became one job');
  });
});
