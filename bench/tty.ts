/**
 * Interactive exec (issue 17's target): the keystroke echo round trip of a
 * shell under a pseudo-terminal in a real µOS VM (QEMU, TCG here) ÷ the
 * agent ping round trip on the same VM, ≤ 2, side by side in one run.
 *
 * Echo: a controller sends one key with job.stdin, as `mvirt exec -it` does,
 * to `sh` running as a tty job (busybox ash's line editor reads the key and
 * writes it back through mvirt-pty), and the time runs until that key comes
 * back on the job's output topic (not waiting for job.stdin's reply). Ping:
 * mvirtd's own agent call, host → guest → host. Interleaved, so a busy
 * moment on the machine hits both alike; medians of ROUNDS.
 * Seen 2026-12-07 (2 cores, other engineers' QEMU guests running): at load
 * 7, 2.15 and 2.34 (echo 17–22 ms, ping 8–9 ms); at load 10–21, 1.54, 1.87
 * and 2.76 (echo 211–608 ms, ping 137–220 ms). The echo crosses two more
 * guest processes than the ping (mvirt-pty, the shell) and the
 * controller's two MQTT hops to mvirtd.
 * With a tty job's stdin reply sent after its echo (guest-agent/jobs.ts),
 * runs alternating with the code before, same day, load 3–13: 1.22–1.93
 * (7 runs) against 1.89–2.63 (7 runs).
 * Where the rest goes (timestamps in the guest, 2026-12-07, load 6–8): the
 * agent decodes and checks a key's message in 0.5–3 ms, as a ping's;
 * mvirt-pty and the shell have the echo back in the agent's pipe 2–4 ms
 * after its write (7 once); the host's hops (RPC in, output out) take
 * 1.5–2 ms; the rest is the agent getting round to its reads and writes on
 * the one vCPU, as for the ping.
 * job.stdin at QoS 0 (host/agent/link.ts) took its PUBACK out of that path.
 */
import type { OutputChunk } from '../protocol/rpc.js';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { removeDir } from '../harness/paths.js';
import { median, ok, round, type BenchRow } from './lib.js';

const ROUNDS = 40;

export default async function tty(): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  const d = await startTestDaemon({
    args: ['--images-dir', IMAGES, '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  });
  const c = await rpcClient(d);
  try {
    ok(await c.call('vm.create', { name: 'bench-tty', memoryMiB: 256 }));
    const vm = ok(
      await c.call('vm.start', { vm: 'bench-tty', wait: true }, { timeoutMs: 300_000 }),
    );
    const job = ok(
      await c.call('job.run', {
        vm: vm.id,
        argv: ['sh'],
        env: { PS1: '$ ' },
        tty: true,
        cols: 200,
        rows: 50,
        stdinOpen: true,
        encoding: 'bytes',
      }),
    );
    let screen = '';
    let seen: (() => void) | null = null;
    const topic = `${d.root}/job/${job.jobId}/output`;
    c.mqtt.on('message', (tp: string, payload: Buffer) => {
      if (tp !== topic) return;
      screen += Buffer.from(
        (JSON.parse(payload.toString()) as OutputChunk).data,
        'base64',
      ).toString();
      seen?.();
    });
    await c.mqtt.subscribeAsync(topic, { qos: 0 });
    const until = (test: () => boolean) =>
      new Promise<void>((resolve) => {
        seen = () => {
          if (!test()) return;
          seen = null;
          resolve();
        };
        seen();
      });
    const type = (keys: string) =>
      c.call('job.stdin', { jobId: job.jobId, data: Buffer.from(keys).toString('base64') });
    await until(() => screen.includes('$ '));

    const echo: number[] = [];
    const ping: number[] = [];
    for (let i = 0; i < ROUNDS + 5; i++) {
      // Keys on one line (200 columns: no wrap), nothing else on the way during a ping.
      const key = String.fromCharCode(0x61 + (i % 26));
      const from = screen.length;
      const t0 = performance.now();
      const back = until(() => screen.slice(from).includes(key));
      const sent = type(key);
      await back;
      const e = performance.now() - t0;
      await sent;
      const t1 = performance.now();
      await d.daemon.agents.call(vm.id, 'ping', {}, 30_000);
      const p = performance.now() - t1;
      if (i >= 5) {
        echo.push(e);
        ping.push(p);
      }
    }
    await c.call('job.cancel', { jobId: job.jobId });
    const e = median(echo);
    const p = median(ping);
    return [
      {
        name: 'tty keystroke echo round trip (p50)',
        value: round(e),
        unit: 'ms',
        note: `job.stdin → sh under mvirt-pty → output topic; ${ROUNDS} rounds`,
      },
      { name: 'agent ping round trip, same VM (p50)', value: round(p), unit: 'ms' },
      {
        name: 'keystroke echo ÷ agent ping',
        value: round(e / p),
        unit: 'ratio',
        ratio: e / p,
        target: '<= 2',
      },
    ];
  } finally {
    await c.close();
    await d.stop();
    await removeDir(d.dataDir);
  }
}
