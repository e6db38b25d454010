/**
 * Interop: the agent's MQTT is plain MQTT 3.1.1. Its virtio-serial channel is
 * bridged with socat to Debian's Mosquitto (no mvirt code on the host side),
 * and an mqtt.js client on Mosquitto sees hello and ready and gets a ping
 * answered.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import mqtt from 'mqtt';
import { Hello } from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';
import { topics } from '../../protocol/topics.js';
import { BOOT_WAIT_MS, bootDefaultImage, imageMissing } from '../support/agent-vm.js';
import { withTimeout } from '../support/broker-fixtures.js';
import { killLaunched } from '../support/qemu-vm.js';

const ROOT = 'mvirt/mosq-test';
const VM = 'vm-mosquitto1';
const T = topics(ROOT);
const children: ChildProcess[] = [];
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await killLaunched();
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

async function startMosquitto(dir: string): Promise<number> {
  const port = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  await writeFile(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  // Mosquitto logs "Opening ipv4 listen socket" once it is listening.
  let err = '';
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        if (/listen socket on port/.test(err)) resolve();
      });
      child.on('exit', (code) => reject(new Error(`mosquitto exited ${code}: ${err}`)));
    }),
    'mosquitto listening',
  );
  return port;
}

test(
  'the agent talks MQTT to Debian mosquitto over a socat bridge',
  { skip: imageMissing, timeout: 600_000 },
  async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-mosq-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const port = await startMosquitto(dir);

    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4 });
    t.after(() => client.endAsync());
    const got: { kind: string; msg: Record<string, unknown> }[] = [];
    const waiters: { kind: string; resolve: (m: Record<string, unknown>) => void }[] = [];
    client.on('message', (topic, payload) => {
      const kind = topic.split('/').pop()!;
      const msg = decodeCbor(payload) as Record<string, unknown>;
      got.push({ kind, msg });
      for (const w of waiters.filter((w) => w.kind === kind)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    });
    const wait = (kind: string, ms = BOOT_WAIT_MS) =>
      withTimeout(
        new Promise<Record<string, unknown>>((resolve) => {
          const hit = got.find((g) => g.kind === kind);
          if (hit) resolve(hit.msg);
          else waiters.push({ kind, resolve });
        }),
        `${kind} via mosquitto`,
        ms,
      );
    await client.subscribeAsync(`${T.agentRoot(VM)}/up/#`, { qos: 1 });

    const { vm, dir: vmDir } = await bootDefaultImage({ vmId: VM, root: ROOT, memoryMiB: 256 });
    t.after(() => rm(vmDir, { recursive: true, force: true }));
    // socat: the QEMU chardev socket on one side, Mosquitto on the other.
    const socat = spawn(
      'socat',
      [`UNIX-CONNECT:${path.join(vmDir, 'agent.sock')}`, `TCP:127.0.0.1:${port}`],
      {
        stdio: 'ignore',
      },
    );
    children.push(socat);
    assert.ok(vm.runtime.pid > 0);

    const hello = Hello.parse(await wait('hello'));
    assert.match(hello.agentVersion, /^\d+\.\d+\.\d+/);
    await wait('ready');
    await client.publishAsync(
      T.agentDown(VM, 'ping'),
      encodeCbor({ id: 'p1', data: Buffer.from('hi') }),
      { qos: 1 },
    );
    const reply = await wait('reply', 120_000);
    assert.equal(reply.id, 'p1');
    assert.equal(reply.ok, true);
    socat.kill('SIGKILL');
    await once(socat, 'exit');
  },
);
