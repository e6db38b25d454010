/**
 * The real agent in a real microVM: the default image boots under QEMU TCG
 * in 128 MiB with the virtio-serial channel, and the agent is driven through
 * a real aedes broker on the host end of the socket — hello, ready, uname -r
 * against the pinned kernel, a job with stdin, a non-zero exit, a timeout that
 * kills the whole process group, telemetry, a bad message, shutdown that
 * powers the VM off. No sleeps: every wait is on a message or an exit.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, test } from 'node:test';
import { createBroker } from '../../host/broker/index.js';
import { silentLogger } from '../../host/log.js';
import { Hello, Telemetry, type Exit, type Output, type Reply } from '../../protocol/agent.js';
import { decodeCbor, encodeCbor } from '../../protocol/codec.js';
import { parseAgentUpTopic, topics, type AgentDownKind } from '../../protocol/topics.js';
import { BOOT_WAIT_MS, bootDefaultImage, imageMissing } from '../support/agent-vm.js';
import { killLaunched } from '../support/qemu-vm.js';
import { withTimeout } from '../support/broker-fixtures.js';

const ROOT = 'mvirt/agent-vm-test';
const T = topics(ROOT);
const JOB_MS = 120_000;

after(killLaunched);

type Up = { kind: string; msg: Record<string, unknown> };

/** Everything the guest says, decoded, with waits on a predicate. */
function collector() {
  const seen: Up[] = [];
  const waiters: { pred: (u: Up) => boolean; resolve: (u: Up) => void }[] = [];
  return {
    seen,
    push(u: Up) {
      seen.push(u);
      for (const w of waiters.filter((w) => w.pred(u))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(u);
      }
    },
    wait(pred: (u: Up) => boolean, what: string, ms = JOB_MS): Promise<Up> {
      const hit = seen.find(pred);
      if (hit) return Promise.resolve(hit);
      return withTimeout(new Promise<Up>((resolve) => waiters.push({ pred, resolve })), what, ms);
    },
  };
}

test(
  'the agent in a 128 MiB microVM, driven through the embedded broker',
  { skip: imageMissing, timeout: 900_000 },
  async (t) => {
    const vmId = 'vm-agenttest1';
    const broker = await createBroker({ root: ROOT, listen: false }, silentLogger());
    t.after(() => broker.close());
    const up = collector();
    await broker.subscribe(`${ROOT}/agent/+/up/+`, (topic, payload) => {
      const where = parseAgentUpTopic(ROOT, topic);
      assert.ok(where, `unexpected topic ${topic}`);
      assert.equal(where.vmId, vmId);
      up.push({ kind: where.kind, msg: decodeCbor(payload) as Record<string, unknown> });
    });
    const send = (kind: AgentDownKind, msg: unknown) =>
      broker.publish(T.agentDown(vmId, kind), encodeCbor(msg), { qos: 1 });

    const { vm, manifest, dir } = await bootDefaultImage({
      vmId,
      root: ROOT,
      memoryMiB: 128,
      agentArgs: { 'mvirt.telemetry_ms': '1000' },
    });
    t.after(() => rm(dir, { recursive: true, force: true }));
    // The host end of the channel: re-attached whenever the broker drops it
    // (e.g. a CONNECT that arrived torn while the guest was still booting).
    let attached = true;
    const attach = async () => {
      const h = broker.attachAgentChannel(vmId, await vm.connectAgent());
      void h.closed.then(() => {
        if (attached) void attach();
      });
    };
    await attach();
    t.after(() => (attached = false));

    const jobs = new Map<string, { out: Output[]; exit?: Exit }>();
    const job = (id: string) => jobs.get(id) ?? jobs.set(id, { out: [] }).get(id)!;
    let n = 0;
    const run = async (argv: string[], extra: Record<string, unknown> = {}) => {
      const jobId = `job-${++n}`;
      await send('exec', { id: `r-${jobId}`, jobId, argv, ...extra });
      const exit = (
        await up.wait(
          (u) => u.kind === 'exit' && u.msg.jobId === jobId,
          `exit of ${argv.join(' ')}`,
        )
      ).msg as unknown as Exit;
      const out = up.seen
        .filter((u) => u.kind === 'output' && u.msg.jobId === jobId)
        .map((u) => u.msg as unknown as Output)
        .sort((a, b) => a.seq - b.seq);
      job(jobId).exit = exit;
      const text = (s: 'stdout' | 'stderr') =>
        Buffer.concat(out.filter((o) => o.stream === s).map((o) => Buffer.from(o.data))).toString();
      return { jobId, exit, out, stdout: text('stdout'), stderr: text('stderr') };
    };

    await t.test('hello with the boot timeline, then ready', async () => {
      const hello = Hello.parse(
        (await up.wait((u) => u.kind === 'hello', 'hello', BOOT_WAIT_MS)).msg,
      );
      assert.equal(hello.kernel, manifest.kernel.release);
      assert.ok(
        hello.boot.initS > 0 && hello.boot.initS <= hello.boot.agentStartS,
        JSON.stringify(hello.boot),
      );
      assert.ok(hello.boot.agentStartS <= hello.boot.connectedS, JSON.stringify(hello.boot));
      await up.wait((u) => u.kind === 'ready', 'ready', BOOT_WAIT_MS);
    });

    await t.test('uname -r is the pinned kernel', async () => {
      const r = await run(['uname', '-r']);
      assert.equal(r.exit.exitCode, 0);
      assert.equal(r.stdout.trim(), manifest.kernel.release);
    });

    await t.test('a job with stdin; output sequence numbers are dense', async () => {
      const r = await run(['sh', '-c', 'cat; echo err >&2'], {
        stdin: Buffer.from('hello from the host\n'),
      });
      assert.equal(r.exit.exitCode, 0);
      assert.equal(r.stdout, 'hello from the host\n');
      assert.equal(r.stderr, 'err\n');
      assert.deepEqual(
        r.out.map((o) => o.seq),
        r.out.map((_, i) => i),
      );
      assert.equal(r.exit.seq, r.out.length);
    });

    await t.test('a non-zero exit and a missing program', async () => {
      const r = await run(['sh', '-c', 'exit 7']);
      assert.equal(r.exit.exitCode, 7);
      assert.equal(r.exit.signal, null);
      const missing = await run(['/no/such/program']);
      assert.ok(missing.exit.error, 'spawn failure is reported');
    });

    await t.test('a timeout kills the whole process group', async () => {
      const r = await run(['sh', '-c', 'sleep 600 & sleep 600 & wait'], { timeoutMs: 2000 });
      assert.equal(r.exit.timedOut, true);
      assert.notEqual(r.exit.signal, null);
      // Neither background sleep survived: the whole group got the signal.
      const ps = await run(['sh', '-c', 'ps -o args | grep -c "^sleep 600" || true']);
      assert.equal(ps.stdout.trim(), '0');
    });

    await t.test('telemetry arrives on the interval and validates', async () => {
      const before = up.seen.filter((u) => u.kind === 'telemetry').length;
      const tm = await up.wait(
        (u) =>
          u.kind === 'telemetry' &&
          up.seen.filter((x) => x.kind === 'telemetry').indexOf(u) >= before,
        'telemetry',
      );
      const m = Telemetry.parse(tm.msg);
      assert.ok(m.memTotalMiB > 64 && m.memTotalMiB <= 128, `memTotalMiB ${m.memTotalMiB}`);
      assert.ok(m.uptimeS > 0);
    });

    await t.test('a bad message gets an error reply; the agent keeps working', async () => {
      await send('exec', { id: 'bad-1', jobId: 'j', argv: 'not-an-array', surprise: true });
      const reply = (
        await up.wait((u) => u.kind === 'reply' && u.msg.id === 'bad-1', 'error reply')
      ).msg as unknown as Reply;
      assert.equal(reply.ok, false);
      assert.equal(reply.error?.code, 'BAD_MESSAGE');
      await broker.publish(T.agentDown(vmId, 'ping'), Buffer.from([0xff, 0x00, 0x13]), { qos: 1 });
      await send('ping', { id: 'ping-1', data: Buffer.from('still here') });
      const pong = (await up.wait((u) => u.kind === 'reply' && u.msg.id === 'ping-1', 'pong'))
        .msg as unknown as Reply;
      assert.equal(pong.ok, true);
    });

    await t.test('a resent exec with the same job id never runs twice', async () => {
      const jobId = 'once';
      const msg = { id: 'r-once-1', jobId, argv: ['sh', '-c', 'echo ran'] };
      await send('exec', msg);
      await up.wait((u) => u.kind === 'exit' && u.msg.jobId === jobId, 'first run');
      await send('exec', { ...msg, id: 'r-once-2' });
      const dup = (await up.wait((u) => u.kind === 'reply' && u.msg.id === 'r-once-2', 'dup reply'))
        .msg as unknown as Reply;
      assert.equal(dup.ok, true);
      assert.deepEqual((dup.result as { duplicate?: boolean }).duplicate, true);
      const ran = up.seen.filter(
        (u) =>
          u.kind === 'output' &&
          u.msg.jobId === jobId &&
          Buffer.from(u.msg.data as Uint8Array).toString() === 'ran\n',
      );
      assert.equal(ran.length, 1);
    });

    await t.test('shutdown powers the VM off', async () => {
      await send('power', { id: 'off-1', action: 'poweroff' });
      const reply = (
        await up.wait((u) => u.kind === 'reply' && u.msg.id === 'off-1', 'power reply')
      ).msg as unknown as Reply;
      assert.equal(reply.ok, true);
      attached = false;
      const exit = await withTimeout(
        vm.exited,
        'QEMU exits after the guest powers off',
        BOOT_WAIT_MS,
      );
      assert.equal(exit.signal, null, exit.reason);
    });
  },
);
