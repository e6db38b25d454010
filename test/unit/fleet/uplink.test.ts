/**
 * mvirtd --uplink against a real Mosquitto run with the shipped
 * docs/fleet/ configuration and ACLs: controllers connected only to
 * Mosquitto drive a host whose VMs are fake (running the real agent core),
 * the broker's last will reports a dead or silent host, a restarted broker
 * gets the host's retained state again, and the ACL keeps each host (and
 * every controller) out of other hosts' topics.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqtt from 'mqtt';
import type { HostStatus } from '../../../protocol/rpc.js';
import { rpcClient, type RpcClient } from '../../../harness/client.js';
import { HOST_ID, spawnDaemon, stopProcess } from '../../../harness/daemon.js';
import { hasMosquitto, startMosquitto, type MosquittoBroker } from '../../../harness/mosquitto.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { startTcpProxy, type TcpProxy } from '../../../harness/tcp-proxy.js';
import { cleanupAll, result, startJobDaemon, type JobDaemon } from '../../support/jobs.js';
import { createUplink, type Uplink } from '../../../host/uplink/link.js';
import { uplinkSender } from '../../../host/uplink/mirror.js';
import { silentLogger } from '../../../host/log.js';

const KEEPALIVE_S = 2;
const ROOT = `mvirt/${HOST_ID}`;
const OTHER = 'other-host';
const PASSWORDS: Record<string, string> = { [HOST_ID]: 'pw-host', [OTHER]: 'pw-other' };

const skip = hasMosquitto() ? false : 'mosquitto is not installed (scripts/install-deps.sh)';

describe('mvirtd --uplink on a real Mosquitto with the shipped ACL', { skip }, () => {
  let mq: MosquittoBroker;
  let proxy: TcpProxy;
  let jd: JobDaemon;
  let uplink: Uplink;
  let tmp: string;
  const clients: RpcClient[] = [];

  async function credentials(user: string): Promise<string> {
    const file = path.join(tmp, `${user}.json`);
    await writeFile(file, JSON.stringify({ username: user, password: PASSWORDS[user] }));
    await chmod(file, 0o600);
    return file;
  }

  /** A controller connected to Mosquitto only, as alice. */
  async function controller(): Promise<RpcClient> {
    const c = await rpcClient(
      { url: `mqtt://127.0.0.1:${mq.controllersPort}`, root: ROOT },
      { username: 'alice', password: 'pw-alice' },
    );
    clients.push(c);
    return c;
  }

  const status = (p: Buffer): HostStatus | null =>
    p.length === 0 ? null : (JSON.parse(p.toString()) as HostStatus);

  before(async () => {
    tmp = await makeTempDir('mvirt-fleet-');
    mq = await startMosquitto({ hosts: PASSWORDS, controllers: { alice: 'pw-alice' } });
    // The daemon reaches Mosquitto through a relay the link-loss test can silence.
    proxy = await startTcpProxy({ host: '127.0.0.1', port: mq.hostsPort });
    jd = await startJobDaemon({
      args: [
        '--uplink',
        `mqtt://127.0.0.1:${proxy.port}`,
        '--uplink-credentials',
        await credentials(HOST_ID),
        '--uplink-keepalive-s',
        String(KEEPALIVE_S),
        '--uplink-buffer',
        '8',
      ],
    });
    uplink = jd.d.daemon.uplink!;
    await uplink.connected();
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await cleanupAll();
    await proxy.close();
    await mq.close();
    await removeDir(tmp);
  });

  test('a controller on Mosquitto alone creates a VM, lists it, runs a job and reads its output', async () => {
    const c = await controller();
    const online = await c.waitFor(`${ROOT}/status`, (_t, p) => status(p)?.online === true);
    assert.equal(status(online)?.hostId, HOST_ID);
    result(await c.call('vm.create', { name: 'web' }));
    const vm = result(await c.call('vm.start', { vm: 'web', wait: true }));
    assert.equal(vm.state, 'ready');
    const list = result(await c.call('vm.list', {}));
    assert.deepEqual(
      list.vms.map((v) => v.name),
      ['web'],
    );
    // The live output too, not only the reply's copy.
    const live = await c.watch(`${ROOT}/job/+/output`, (_t, p) =>
      (JSON.parse(p.toString()) as { data: string }).data.includes('over the uplink'),
    );
    const job = result(
      await c.call(
        'job.run',
        { vm: 'web', argv: ['echo', 'over the uplink'], wait: true },
        { timeoutMs: 15_000 },
      ),
    );
    assert.equal(job.state, 'succeeded');
    assert.equal(job.stdout, 'over the uplink\n');
    await live.message;
    // Who acted is recorded: the uplink and the client id its reply topic names.
    const clientId = c.replyTopic.split('/')[2]!;
    const events = result(await jd.c.call('events.query', { actor: `uplink:${clientId}` }));
    assert.ok(
      events.events.some((e) => e.objects.includes(vm.id)),
      `an event on ${vm.id} names uplink:${clientId}: ${JSON.stringify(events.events)}`,
    );
  });

  test('mosquitto_sub and mosquitto_pub: the retained status, and system.info answered over the uplink', async () => {
    const args = [
      '-h',
      '127.0.0.1',
      '-p',
      String(mq.controllersPort),
      '-u',
      'alice',
      '-P',
      'pw-alice',
    ];
    const REPLIES = 'mvirt/_clients/mq-sub/replies';
    // -v: each line is "topic payload"; the status may come again meanwhile.
    const sub = spawn(
      'mosquitto_sub',
      [...args, '-v', '-i', 'mq-sub', '-t', `${ROOT}/status`, '-t', REPLIES],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const lines: { topic: string; payload: string }[] = [];
    const waits: { topic: string; resolve: (payload: string) => void }[] = [];
    let buf = '';
    sub.stdout.on('data', (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const sp = line.indexOf(' ');
        const m = { topic: line.slice(0, sp), payload: line.slice(sp + 1) };
        lines.push(m);
        for (const w of waits.filter((x) => x.topic === m.topic)) w.resolve(m.payload);
      }
    });
    const next = (topic: string): Promise<string> =>
      new Promise((resolve) => waits.push({ topic, resolve }));
    try {
      // The retained status arrives once subscribed: the reply cannot be missed after it.
      const first = await next(`${ROOT}/status`);
      assert.equal((JSON.parse(first) as HostStatus).online, true);
      const replied = next(REPLIES);
      const request = { id: 'i-1', replyTo: REPLIES };
      const pub = spawn(
        'mosquitto_pub',
        [...args, '-t', `${ROOT}/rpc/system.info`, '-m', JSON.stringify(request)],
        { stdio: 'inherit' },
      );
      assert.equal(await new Promise((resolve) => pub.once('exit', resolve)), 0);
      const reply = JSON.parse(await replied) as {
        id: string;
        ok: boolean;
        result: { hostId: string; uplink: { connected: boolean; broker: string } };
      };
      assert.equal(reply.id, 'i-1');
      assert.equal(reply.ok, true);
      assert.equal(reply.result.hostId, HOST_ID);
      assert.equal(reply.result.uplink.connected, true);
    } finally {
      sub.kill();
    }
  });

  test('a retained update published while the link is busy still goes out, without a reconnect', async () => {
    const c = await controller();
    const topic = `${ROOT}/pool/burst/state`;
    const connects = uplink.info().connects;
    const last = await c.watch(topic, (_t, p) => p.toString() === '{"n":"last"}');
    // More than the link keeps in flight at once (256), synchronously: the rest waits.
    for (let i = 0; i < 400; i++) void uplink.publish(`${ROOT}/events`, `{"i":${i}}`, { qos: 1 });
    void uplink.publish(topic, '{"n":"last"}', { retain: true, qos: 1 });
    await last.message;
    assert.equal(uplink.info().connects, connects, 'no reconnect was needed');
    const gone = await c.watch(topic, (_t, p) => p.length === 0);
    void uplink.publish(topic, '', { retain: true, qos: 1 });
    await gone.message;
  });

  test("with the shipped ACL a host's credentials cannot publish under another host's prefix", async () => {
    const host = await mqtt.connectAsync(`mqtt://127.0.0.1:${mq.hostsPort}`, {
      protocolVersion: 5, // v5: a refused QoS 1 publish gets a PUBACK with a reason code
      clientId: 'acl-probe-host',
      username: HOST_ID,
      password: PASSWORDS[HOST_ID],
      reconnectPeriod: 0,
    });
    const alice = await mqtt.connectAsync(`mqtt://127.0.0.1:${mq.controllersPort}`, {
      protocolVersion: 5,
      clientId: 'acl-probe-alice',
      username: 'alice',
      password: 'pw-alice',
      reconnectPeriod: 0,
    });
    try {
      const forged = JSON.stringify({ hostId: OTHER, online: true, at: new Date().toISOString() });
      await assert.rejects(
        host.publishAsync(`mvirt/${OTHER}/status`, forged, { qos: 1, retain: true }),
        /Not authorized/,
      );
      await assert.rejects(
        host.publishAsync(`mvirt/${OTHER}/vm/vm-1/state`, '{}', { qos: 1 }),
        /Not authorized/,
      );
      // Its own prefix is open to it (what the uplink itself relies on).
      await host.publishAsync(`${ROOT}/events`, '{}', { qos: 1 });
      // Nor may it read another host's requests: Mosquitto 2.0 grants the
      // subscription and checks each delivery. alice's two requests reach the
      // probe in the order she sent them, so once the second (to the probe's
      // own host) is in, the first would have been too.
      const seen: string[] = [];
      const own = new Promise<void>((resolve) =>
        host.on('message', (topic) => {
          seen.push(topic);
          if (topic === `${ROOT}/rpc/acl.probe`) resolve();
        }),
      );
      await host.subscribeAsync([`mvirt/${OTHER}/rpc/#`, `${ROOT}/rpc/acl.probe`], { qos: 1 });
      await alice.publishAsync(`mvirt/${OTHER}/rpc/system.info`, '{}', { qos: 1 });
      await alice.publishAsync(`${ROOT}/rpc/acl.probe`, '{}', { qos: 1 });
      await own;
      assert.deepEqual(seen, [`${ROOT}/rpc/acl.probe`]);
      // A controller sends requests and nothing else under a host's prefix.
      await assert.rejects(
        alice.publishAsync(`${ROOT}/status`, forged, { qos: 1, retain: true }),
        /Not authorized/,
      );
      await alice.publishAsync(`${ROOT}/rpc/system.info`, '{}', { qos: 1 });
    } finally {
      await host.endAsync();
      await alice.endAsync();
    }
  });

  test('an mvirtd logged in as another host cannot publish under its own prefix: the shipped ACL refuses, and the uplink says so', async () => {
    const IMPOSTOR = 'impostor';
    // Its host id is not its broker user (other-host): %u in hosts.acl is not its prefix.
    const impostor = await startJobDaemon({
      args: [
        '--host-id',
        IMPOSTOR,
        '--uplink',
        `mqtt://127.0.0.1:${mq.hostsPort}`,
        '--uplink-credentials',
        await credentials(OTHER),
      ],
    });
    const link = impostor.d.daemon.uplink!;
    try {
      await link.connected();
      // Its retained status goes out at QoS 1 first: Mosquitto answers it with 0x87.
      assert.match(
        await link.refused(),
        /^publish to mvirt\/impostor\/status refused: .*Not authorized/,
      );
      // Nothing of it reached the broker: a fresh subscriber gets the retained
      // messages of its filters before anything it publishes itself afterwards.
      const probe = await mqtt.connectAsync(`mqtt://127.0.0.1:${mq.controllersPort}`, {
        clientId: 'impostor-probe',
        username: 'alice',
        password: 'pw-alice',
        reconnectPeriod: 0,
      });
      try {
        const marker = 'mvirt/_clients/impostor-probe/marker';
        const seen: string[] = [];
        const done = new Promise<void>((resolve) =>
          probe.on('message', (topic) => (topic === marker ? resolve() : seen.push(topic))),
        );
        await probe.subscribeAsync([`mvirt/${IMPOSTOR}/#`, marker], { qos: 1 });
        await probe.publishAsync(marker, 'x', { qos: 1 });
        await done;
        assert.deepEqual(seen, []);
      } finally {
        await probe.endAsync();
      }
      const info = link.info();
      assert.ok(info.refused >= 1, JSON.stringify(info));
      // Its local API is unaffected.
      assert.equal(result(await impostor.c.call('system.info', {})).uplink?.refused, info.refused);
    } finally {
      await impostor.stopDaemon();
    }
  });

  test('a broker restart: mvirtd reconnects and republishes; meanwhile local work goes on and drops are counted', async (t) => {
    await mq.stop();
    await uplink.disconnected();
    // Local controllers (the embedded broker) are not held up by the dead link.
    const job = result(
      await jd.c.call('job.run', {
        vm: 'web',
        argv: ['sh', '-c', 'echo one; echo two'],
        wait: true,
      }),
    );
    assert.equal(job.state, 'succeeded');
    assert.equal(job.stdout, 'one\ntwo\n');
    for (let i = 0; i < 3; i++) await jd.run({ vm: 'web', argv: ['echo', String(i)], wait: true });
    const info = result(await jd.c.call('system.info', {}));
    assert.equal(info.uplink?.connected, false);
    assert.equal(info.uplink?.queued, 8, 'the buffer is full at its bound');
    assert.ok((info.uplink?.dropped ?? 0) > 0, `drops counted: ${JSON.stringify(info.uplink)}`);

    await mq.restart(); // persistence off: Mosquitto starts with no retained message at all
    const t0 = performance.now();
    await uplink.connected();
    t.diagnostic(
      `broker restart: reconnected ${Math.round(performance.now() - t0)} ms after it was back`,
    );
    const c = await controller();
    const vmState = await c.waitFor(`${ROOT}/vm/+/state`, (_t, p) => p.length > 0);
    assert.equal((JSON.parse(vmState.toString()) as { name: string }).name, 'web');
    const jobState = await c.waitFor(`${ROOT}/job/${job.jobId}/state`, (_t, p) => p.length > 0);
    assert.equal((JSON.parse(jobState.toString()) as { state: string }).state, 'succeeded');
    const online = await c.waitFor(`${ROOT}/status`, () => true);
    assert.equal(status(online)?.online, true);
    assert.equal(result(await c.call('system.info', {})).uplink?.connected, true);
  });

  test('a silent link: the broker sends the last will within 1.5 × keepalive, then the host is back', async (t) => {
    const c = await controller();
    await c.waitFor(`${ROOT}/status`, (_t, p) => status(p)?.online === true);
    const offline = await c.watch(`${ROOT}/status`, (_t, p) => status(p)?.online === false, 20_000);
    const t0 = performance.now();
    proxy.freeze(); // no FIN, no RST: only the keepalive can tell
    await offline.message;
    const ms = performance.now() - t0;
    // Mosquitto checks keepalives on its loop (about once a second): allow that much.
    assert.ok(ms <= 1.5 * KEEPALIVE_S * 1000 + 1000, `offline after ${Math.round(ms)} ms`);
    t.diagnostic(`silent link: offline after ${Math.round(ms)} ms (keepalive ${KEEPALIVE_S} s)`);
    // mvirtd's own keepalive notices too; it reconnects and says it is online again.
    const back = await c.watch(`${ROOT}/status`, (_t, p) => status(p)?.online === true, 20_000);
    await back.message;
  });

  test('uplink requests pass the same access checks: a viewer uplink is refused changes, and the refusal names the caller', async () => {
    const viewer = await startJobDaemon({
      args: [
        '--host-id',
        OTHER,
        '--uplink',
        `mqtt://127.0.0.1:${mq.hostsPort}`,
        '--uplink-credentials',
        await credentials(OTHER),
        '--uplink-role',
        'viewer',
      ],
    });
    await viewer.d.daemon.uplink!.connected();
    const c = await rpcClient(
      { url: `mqtt://127.0.0.1:${mq.controllersPort}`, root: `mvirt/${OTHER}` },
      { username: 'alice', password: 'pw-alice' },
    );
    clients.push(c);
    assert.deepEqual(result(await c.call('vm.list', {})).vms, []);
    const refused = await c.call('vm.create', { name: 'nope' });
    assert.equal(refused.ok ? 'ok' : refused.error.code, 'FORBIDDEN');
    assert.deepEqual(result(await viewer.c.call('vm.list', {})).vms, [], 'nothing was made');
    const clientId = c.replyTopic.split('/')[2]!;
    const audit = result(
      await viewer.c.call('events.query', { actor: `uplink:${clientId}`, level: 'audit' }),
    );
    assert.ok(
      audit.events.some((e) => e.message.startsWith('vm.create refused')),
      JSON.stringify(audit.events),
    );
    // Its clean stop says offline itself (and frees the host id for the next test).
    const offline = await c.watch(`mvirt/${OTHER}/status`, (_t, p) => status(p)?.online === false);
    await viewer.stopDaemon();
    await offline.message;
  });

  test('close() while the link is busy still sends the pending state (the offline status) before its DISCONNECT', async () => {
    const link = createUplink({
      options: {
        url: `mqtt://127.0.0.1:${mq.hostsPort}`,
        broker: `127.0.0.1:${mq.hostsPort}`,
        username: OTHER,
        password: PASSWORDS[OTHER]!,
        ca: null,
        access: { role: 'viewer', scope: null },
        keepaliveS: 30,
        bufferMessages: 1000,
        retainedTopics: 100,
      },
      statusTopic: `mvirt/${OTHER}/status`,
      hostId: OTHER,
      senderOf: uplinkSender({
        prefix: 'mvirt',
        broker: 'test',
        access: { role: 'viewer', scope: null },
      }),
      log: silentLogger(),
    });
    link.start();
    await link.connected();
    const c = await controller();
    const offline = await c.watch(
      `mvirt/${OTHER}/status`,
      (_t, p) => status(p)?.online === false && status(p)?.at === 'at-close',
    );
    // More than the link keeps in flight at once, synchronously, then the last state and close().
    for (let i = 0; i < 400; i++)
      void link.publish(`mvirt/${OTHER}/events`, `{"i":${i}}`, { qos: 1 });
    const last: HostStatus = { hostId: OTHER, online: false, at: 'at-close' };
    void link.publish(`mvirt/${OTHER}/status`, JSON.stringify(last), { retain: true, qos: 1 });
    await link.close();
    await offline.message;
  });

  test('kill -9 of a spawned mvirtd: its last will says offline', async (t) => {
    const c = await controller();
    const dataDir = await makeTempDir('mvirt-fleet-other-');
    const seen = await c.watch(
      `mvirt/${OTHER}/status`,
      (_t, p) => status(p)?.online === true,
      60_000,
    );
    const d = await spawnDaemon([
      '--data-dir',
      dataDir,
      '--host-id',
      OTHER,
      '--uplink',
      `mqtt://127.0.0.1:${mq.hostsPort}`,
      '--uplink-credentials',
      await credentials(OTHER),
      '--uplink-keepalive-s',
      String(KEEPALIVE_S),
    ]);
    try {
      await seen.message;
      const offline = await c.watch(
        `mvirt/${OTHER}/status`,
        (_t, p) => status(p)?.online === false,
      );
      const t0 = performance.now();
      d.child.kill('SIGKILL');
      await offline.message;
      const ms = performance.now() - t0;
      assert.ok(ms <= 1.5 * KEEPALIVE_S * 1000, `offline after ${Math.round(ms)} ms`);
      t.diagnostic(`kill -9: offline after ${Math.round(ms)} ms`);
    } finally {
      await stopProcess(d);
      await removeDir(dataDir);
    }
  });
});
