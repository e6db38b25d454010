/**
 * Two real Mosquittos bridged as docs/fleet.md says (B bridges `mvirt/#` both
 * ways to A's bridges listener), one mvirtd on each, a controller on each:
 * every host is seen from both brokers with its retained status, requests and
 * replies cross the bridge, and a host whose link breaks is declared offline
 * on the far broker too.
 */
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HostStatus } from '../../../protocol/rpc.js';
import { rpcClient, type RpcClient } from '../../../harness/client.js';
import { hasMosquitto, startMosquitto, type MosquittoBroker } from '../../../harness/mosquitto.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { launchBrowser, skipNoBrowser } from '../../../harness/browser.js';
import { adminLogin } from '../../../harness/test-admin.js';
import { runCli } from '../../../host/cli/run.js';
import { memoryIo } from '../../support/cli-io.js';
import { cleanupAll, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';

const HOSTS: Record<string, string> = { 'host-a': 'pw-a', 'host-b': 'pw-b' };
const CONTROLLERS: Record<string, string> = { alice: 'pw-alice', bob: 'pw-bob' };

const skip = hasMosquitto() ? false : 'mosquitto is not installed (scripts/install-deps.sh)';

describe('mvirtd hosts on a bridged pair of Mosquittos', { skip }, () => {
  let a: MosquittoBroker;
  let b: MosquittoBroker;
  let hostA: JobDaemon;
  let hostB: JobDaemon;
  let tmp: string;
  const clients: RpcClient[] = [];

  const status = (p: Buffer): HostStatus | null =>
    p.length === 0 ? null : (JSON.parse(p.toString()) as HostStatus);

  async function host(id: string, broker: MosquittoBroker, label: string): Promise<JobDaemon> {
    const file = path.join(tmp, `${id}.json`);
    await writeFile(file, JSON.stringify({ username: id, password: HOSTS[id] }));
    await chmod(file, 0o600);
    const d = await startJobDaemon({
      args: [
        '--host-id',
        id,
        '--uplink',
        `mqtt://127.0.0.1:${broker.hostsPort}`,
        '--uplink-credentials',
        file,
        '--uplink-keepalive-s',
        '2',
        '--label',
        label,
      ],
    });
    await d.d.daemon.uplink!.connected();
    return d;
  }

  /** A controller on `broker` driving host `id`. */
  async function controller(
    broker: MosquittoBroker,
    user: 'alice' | 'bob',
    id: string,
  ): Promise<RpcClient> {
    const c = await rpcClient(
      { url: `mqtt://127.0.0.1:${broker.controllersPort}`, root: `mvirt/${id}` },
      { username: user, password: CONTROLLERS[user] },
    );
    clients.push(c);
    return c;
  }

  before(async () => {
    tmp = await makeTempDir('mvirt-bridge-');
    a = await startMosquitto({
      hosts: { 'host-a': HOSTS['host-a']! },
      controllers: CONTROLLERS,
      bridges: { 'bridge-b': 'pw-bridge' },
    });
    b = await startMosquitto({
      hosts: { 'host-b': HOSTS['host-b']! },
      controllers: CONTROLLERS,
      bridgeTo: { port: a.bridgesPort, username: 'bridge-b', password: 'pw-bridge' },
    });
    hostA = await host('host-a', a, 'gpu=false');
    hostB = await host('host-b', b, 'gpu=true');
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await cleanupAll();
    await b?.close();
    await a?.close();
    await removeDir(tmp);
  });

  test('each host is online, retained, on both brokers', async () => {
    for (const [broker, user] of [
      [a, 'alice'],
      [b, 'bob'],
    ] as const)
      for (const id of Object.keys(HOSTS)) {
        const c = await controller(broker, user, id);
        const s = await c.waitFor(`mvirt/${id}/status`, (_t, p) => status(p)?.online === true);
        assert.equal(status(s)?.hostId, id);
      }
  });

  test('mvirt hosts on either broker lists the whole fleet', async () => {
    // Each host refreshes its status once its link is up (the status carries the link's figures).
    for (const id of Object.keys(HOSTS)) {
      const c = await controller(a, 'alice', id);
      await c.waitFor(`mvirt/${id}/status`, (_t, p) => status(p)?.uplink?.connected === true);
    }
    for (const [broker, user] of [
      [a, 'alice'],
      [b, 'bob'],
    ] as const) {
      const env = {
        MVIRT_BROKER: `mqtt://127.0.0.1:${broker.controllersPort}`,
        MVIRT_USER: user,
        MVIRT_PASSWORD: CONTROLLERS[user]!,
      };
      const m = memoryIo({ env });
      assert.equal(await runCli(['hosts', '--json'], m), 0, m.errText());
      const hosts = JSON.parse(m.out()) as HostStatus[];
      assert.deepEqual(
        hosts.map((h) => [h.hostId, h.online, h.uplink?.connected]),
        [
          ['host-a', true, true],
          ['host-b', true, true],
        ],
      );
      const f = memoryIo({ env });
      assert.equal(await runCli(['info', '--fleet', '--json'], f), 0, f.errText());
      const fleet = JSON.parse(f.out()) as {
        totals: { hosts: number; online: number; cpus: number };
        hosts: HostStatus[];
      };
      assert.equal(fleet.totals.hosts, 2);
      assert.equal(fleet.totals.online, 2);
      assert.equal(fleet.totals.cpus, hosts[0]!.cpus! + hosts[1]!.cpus!);
      const ft = memoryIo({ env });
      assert.equal(await runCli(['info', '--fleet'], ft), 0, ft.errText());
      assert.match(ft.out(), /Hosts:?\s+2 online of 2/);
      const t = memoryIo({ env });
      assert.equal(await runCli(['hosts'], t), 0, t.errText());
      const lines = t.out().trim().split('\n');
      assert.match(
        lines[0]!,
        /^HOST\s+ONLINE\s+CPUS\s+MEMORY\s+ALLOCATED\s+VMS\s+UPLINK\s+LAST SEEN/,
      );
      assert.match(lines[1]!, /^host-a\s+yes\s/);
      assert.match(lines[2]!, /^host-b\s+yes\s/);
    }
  });

  test(
    "a host's dashboard lists every host of the fleet, each with a chart of its CPU and memory",
    { skip: skipNoBrowser },
    async () => {
      // host-a's embedded broker carries host-b's status, republished from the uplink (host/fleet/view.ts).
      const b = await launchBrowser({ httpCredentials: adminLogin() });
      try {
        const page = await b.context.newPage();
        await page.goto(`${hostA.d.daemon.http!.url}/`);
        await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 20_000 });
        for (const id of Object.keys(HOSTS)) {
          await page.waitForSelector(`.host[data-host="${id}"]`);
          await page.waitForSelector(
            `.host-chart[data-host="${id}"] .chart:not([data-points="0"])`,
          );
        }
        assert.match((await page.textContent('#host-count')) ?? '', /2 online of 2/);
      } finally {
        await b.close();
      }
    },
  );

  test('requests and replies cross the bridge: a controller on A runs a job on the host of B', async () => {
    const c = await controller(a, 'alice', 'host-b');
    const info = result(await c.call('system.info', {}));
    assert.equal(info.hostId, 'host-b');
    result(await c.call('vm.create', { name: 'far' }));
    assert.equal(result(await c.call('vm.start', { vm: 'far', wait: true })).state, 'ready');
    const job = result(
      await c.call(
        'job.run',
        { vm: 'far', argv: ['echo', 'across the bridge'], wait: true },
        { timeoutMs: 15_000 },
      ),
    );
    assert.equal(job.state, 'succeeded');
    assert.equal(job.stdout, 'across the bridge\n');
    // And the other way round.
    const d = await controller(b, 'bob', 'host-a');
    assert.equal(result(await d.call('system.info', {})).hostId, 'host-a');
  });

  test('mvirt vm ls --all-hosts on broker A lists the VMs of every host, with their host', async () => {
    result(await hostA.c.call('vm.create', { name: 'near' }));
    const env = {
      MVIRT_BROKER: `mqtt://127.0.0.1:${a.controllersPort}`,
      MVIRT_USER: 'alice',
      MVIRT_PASSWORD: CONTROLLERS.alice!,
    };
    const m = memoryIo({ env });
    assert.equal(await runCli(['vm', 'ls', '--all-hosts', '--json'], m), 0, m.errText());
    const r = JSON.parse(m.out()) as {
      hosts: { hostId: string; vms: { name: string }[] }[];
      failed: unknown[];
    };
    assert.deepEqual(
      r.hosts.map((h) => [h.hostId, h.vms.map((v) => v.name)]),
      [
        ['host-a', ['near']],
        ['host-b', ['far']],
      ],
    );
    assert.deepEqual(r.failed, []);
    const t = memoryIo({ env });
    assert.equal(await runCli(['vm', 'ls', '--all-hosts'], t), 0, t.errText());
    const lines = t.out().trim().split('\n');
    assert.match(lines[0]!, /^HOST\s+NAME\s+ID\s+STATE/i);
    assert.match(lines[1]!, /^host-a\s+near\s+\S+\s+stopped/);
    assert.match(lines[2]!, /^host-b\s+far\s+\S+\s+ready/);
  });

  test('figures: job.run to done on a fake VM, across the bridge ÷ on the embedded broker', async (t) => {
    const far = await controller(a, 'alice', 'host-b');
    const median = async (c: RpcClient): Promise<number> => {
      const ms: number[] = [];
      for (let i = 0; i < 15; i++) {
        const t0 = performance.now();
        const r = result(await c.call('job.run', { vm: 'far', argv: ['true'], wait: true }));
        ms.push(performance.now() - t0);
        assert.equal(r.state, 'succeeded');
      }
      return ms.sort((x, y) => x - y)[7]!;
    };
    await median(hostB.c); // warm both paths
    const local = await median(hostB.c);
    const uplinked = await median(await controller(b, 'bob', 'host-b'));
    const bridged = await median(far);
    t.diagnostic(
      `job.run wait, median of 15: embedded ${local.toFixed(1)} ms, over the host's own Mosquitto ${uplinked.toFixed(1)} ms, across the bridge ${bridged.toFixed(1)} ms, ratio ${(bridged / local).toFixed(2)}`,
    );
  });

  test('mvirt run --fleet on broker A: a host of the fleet queue takes it, its output streams', async () => {
    const env = {
      MVIRT_BROKER: `mqtt://127.0.0.1:${a.controllersPort}`,
      MVIRT_USER: 'alice',
      MVIRT_PASSWORD: CONTROLLERS.alice!,
    };
    // Both have room: whichever claims first (docs/fleet.md).
    const m = memoryIo({ env });
    assert.equal(await runCli(['run', '--fleet', '-n', '--', 'echo', 'placed'], m), 0, m.errText());
    assert.equal(m.out(), 'placed\n');
    assert.match(m.errText(), /running on host-[ab]/);
    // A label constraint wins over room: only host-b has gpu=true.
    const g = memoryIo({ env });
    assert.equal(
      await runCli(['run', '--fleet', '--label', 'gpu=true', '-n', '--', 'echo', 'gpu'], g),
      0,
      g.errText(),
    );
    assert.equal(g.out(), 'gpu\n');
    assert.match(g.errText(), /running on host-b/);
    const none = memoryIo({ env });
    assert.notEqual(
      await runCli(
        ['run', '--fleet', '--label', 'gpu=maybe', '--queue-timeout', '1', '-n', '--', 'true'],
        none,
      ),
      0,
    );
    assert.match(none.errText(), /queued in the fleet/);
    assert.match(none.errText(), /no host of the fleet took job.run within 1 s/);
    const u = memoryIo({ env });
    assert.equal(await runCli(['run', '--fleet', '--vm', 'far', '--', 'true'], u), 2);
    assert.match(u.errText(), /--fleet places the job on a host: not with --vm/);
  });

  test('a host whose link breaks is offline on the far broker too (its will crosses the bridge), then back', async (t) => {
    const c = await controller(a, 'alice', 'host-b');
    await c.waitFor('mvirt/host-b/status', (_t, p) => status(p)?.online === true);
    const offline = await c.watch('mvirt/host-b/status', (_t, p) => status(p)?.online === false);
    const t0 = performance.now();
    hostB.d.daemon.uplink!.breakLink(); // no DISCONNECT: B publishes the will
    await offline.message;
    t.diagnostic(`will seen across the bridge after ${Math.round(performance.now() - t0)} ms`);
    const back = await c.watch('mvirt/host-b/status', (_t, p) => status(p)?.online === true);
    await back.message;
  });
});
