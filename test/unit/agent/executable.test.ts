/**
 * The built single executable (dist/agent/mvirt-agent, `node guest-agent/build.mjs`)
 * end to end on this host, over the same code path the guest uses for
 * virtio-serial: a pollable character device (a pty that socat bridges to a
 * real aedes broker over TCP stands in for /dev/vportNpM and the host's
 * chardev socket). Skipped when the executable or socat is missing.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Aedes } from 'aedes';
import { AGENT_UP, type AgentUpMessage } from '../../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../../protocol/codec.js';
import type { AgentUpKind } from '../../../protocol/topics.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = path.join(root, 'dist/agent/mvirt-agent');
const hasSocat = spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0;
const skip = !existsSync(BIN)
  ? 'dist/agent/mvirt-agent not built (node guest-agent/build.mjs)'
  : !hasSocat
    ? 'socat not installed'
    : false;

test('mvirt-agent --version prints the version', { skip }, () => {
  const r = spawnSync(BIN, ['--version'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
});

test(
  'the executable dials home over a pollable device, says hello, runs a job',
  { skip },
  async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'agent-exe-'));
    const broker = await Aedes.createBroker();
    const server = net.createServer((s) => broker.handle(s.setNoDelay(true)));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as net.AddressInfo).port;
    const got: Array<{ kind: AgentUpKind; msg: unknown; ok: boolean }> = [];
    const waiters = new Set<() => void>();
    broker.subscribe(
      'mvirt/exe/agent/vm-exe/up/+',
      (p, cb) => {
        const kind = p.topic.split('/').pop() as AgentUpKind;
        const msg = decodeCbor(p.payload as Buffer);
        got.push({ kind, msg, ok: AGENT_UP[kind].safeParse(msg).success });
        for (const w of [...waiters]) w();
        cb();
      },
      () => undefined,
    );
    const waitFor = <K extends AgentUpKind>(
      kind: K,
      pred: (m: AgentUpMessage[K]) => boolean = () => true,
    ) =>
      new Promise<AgentUpMessage[K]>((resolve) => {
        const check = () => {
          const hit = got.find((g) => g.kind === kind && pred(g.msg as AgentUpMessage[K]));
          if (hit) {
            waiters.delete(check);
            resolve(hit.msg as AgentUpMessage[K]);
          }
        };
        waiters.add(check);
        check();
      });

    const device = path.join(dir, 'vport0p1');
    const children: ChildProcess[] = [];
    try {
      const socat = spawn('socat', [`PTY,link=${device},raw,echo=0`, `TCP:127.0.0.1:${port}`], {
        stdio: 'ignore',
      });
      children.push(socat);
      // socat creates the link before it connects; the agent retries until it exists.
      const uptimeAtSpawn = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
      const agent = spawn(BIN, [], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: {
          PATH: process.env.PATH,
          MVIRT_VM: 'vm-exe',
          MVIRT_ROOT: 'mvirt/exe',
          MVIRT_CHANNEL: 'virtio-serial',
          MVIRT_DEVICE: device,
          MVIRT_INIT_UPTIME_FILE: path.join(dir, 'init-uptime'),
        },
      });
      children.push(agent);
      const hello = await waitFor('hello');
      assert.equal(hello.kernel, os.release());
      assert.equal(hello.pid, agent.pid);
      assert.ok(hello.boot.connectedS >= hello.boot.agentStartS);
      // agentStartS is this process's exec time (not the snapshot's build time).
      assert.ok(
        hello.boot.agentStartS >= uptimeAtSpawn - 0.05 &&
          hello.boot.agentStartS <= uptimeAtSpawn + 2,
        `agentStartS ${hello.boot.agentStartS}, spawned at ${uptimeAtSpawn}`,
      );
      await waitFor('ready');

      const publish = (kind: string, msg: unknown) =>
        new Promise<void>((resolve, reject) =>
          broker.publish(
            {
              cmd: 'publish',
              topic: `mvirt/exe/agent/vm-exe/down/${kind}`,
              payload: encodeCbor(msg),
              qos: 1,
              retain: false,
              dup: false,
            },
            (err) => (err ? reject(err) : resolve()),
          ),
        );
      await publish('exec', {
        id: 'x1',
        jobId: 'j1',
        argv: ['sh', '-c', 'read a; echo "got $a"; exit 4'],
        stdin: Buffer.from('hi\n'),
      });
      const reply = await waitFor('reply', (r) => r.id === 'x1');
      assert.equal(reply.ok, true);
      const exit = await waitFor('exit', (e) => e.jobId === 'j1');
      assert.equal(exit.exitCode, 4);
      const out = got
        .filter((g) => g.kind === 'output')
        .map((g) => Buffer.from((g.msg as AgentUpMessage['output']).data).toString())
        .join('');
      assert.equal(out, 'got hi\n');
      await publish('ping', { id: 'bad', data: 'not bytes' });
      assert.equal((await waitFor('reply', (r) => r.id === 'bad')).error?.code, 'BAD_MESSAGE');
      assert.ok(got.every((g) => g.ok));
    } finally {
      for (const c of children.reverse()) {
        if (c.exitCode === null && c.signalCode === null) {
          const exited = once(c, 'exit');
          c.kill('SIGTERM');
          await exited;
        }
      }
      server.close();
      await new Promise<void>((r) => broker.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
