/**
 * Job benches (issue targets), measured side by side in one run on real
 * QEMU VMs (TCG here):
 *  - warm `/bin/true` round trip on a ready VM ÷ (a raw echo round trip on
 *    the same agent channel + one fork/exec measured inside the guest) ≤ 1.5
 *  - output bytes per second reaching a subscribed controller ÷ raw bytes per
 *    second over the same channel (pipelined agent pings carrying payloads) ≥ 0.5
 *  - a job in a fresh VM taken from a warm pool ÷ the same job on a warm
 *    service VM ≤ 3
 * Skipped (one row saying so) when the default image is not built.
 */
import type { JobRecord, OutputChunk, PoolRecord } from '../protocol/rpc.js';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { removeDir } from '../harness/paths.js';
import { median, medianOf, ok, pingRate, round, timedJob, type BenchRow } from './lib.js';

const ROUNDS = 25;

export default async function jobs(): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  const d = await startTestDaemon({
    args: ['--images-dir', IMAGES, '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  });
  const c = await rpcClient(d);
  const rows: BenchRow[] = [];
  try {
    ok(await c.call('vm.create', { name: 'bench-svc', memoryMiB: 256 }));
    const vm = ok(
      await c.call('vm.start', { vm: 'bench-svc', wait: true }, { timeoutMs: 300_000 }),
    );
    const agents = d.daemon.agents;

    // --- /bin/true round trip vs raw echo + fork/exec in the guest
    const t = await medianOf(() => timedJob(c, { vm: vm.id, argv: ['/bin/true'] }), ROUNDS);
    const p = await medianOf(
      async () => {
        const t0 = performance.now();
        await agents.call(vm.id, 'ping', {}, 30_000);
        return performance.now() - t0;
      },
      ROUNDS,
      0,
    );
    // Fork/exec inside the guest: 200 runs of /bin/true timed by the guest's clock.
    const loop = ok(
      await c.call(
        'job.run',
        {
          vm: vm.id,
          wait: true,
          argv: [
            'sh',
            '-c',
            'a=$(cut -d" " -f1 /proc/uptime); i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; b=$(cut -d" " -f1 /proc/uptime); echo $a $b',
          ],
        },
        { timeoutMs: 300_000 },
      ),
    );
    const [a, b] = (loop.stdout ?? '').trim().split(' ').map(Number) as [number, number];
    const forkMs = ((b - a) * 1000) / 200;
    rows.push(
      { name: 'job /bin/true round trip (p50)', value: round(t), unit: 'ms' },
      { name: 'agent ping round trip (p50)', value: round(p), unit: 'ms' },
      { name: 'fork/exec of /bin/true in the guest', value: round(forkMs), unit: 'ms' },
      {
        name: '/bin/true job ÷ (ping + fork/exec)',
        value: round(t / (p + forkMs)),
        unit: 'ratio',
        ratio: t / (p + forkMs),
        target: '<= 1.5',
      },
    );

    // --- output throughput vs raw channel throughput
    const BYTES = 32 * 1024 * 1024;
    const flood = ok(
      await c.call('job.run', {
        vm: vm.id,
        argv: ['sh', '-c', `yes 0123456789abcdef0123456789abcdef | head -c ${BYTES}`],
      }),
    );
    let got = 0;
    let first = 0;
    let last = 0;
    const topic = `${d.root}/job/${flood.jobId}/output`;
    const onMsg = (tp: string, payload: Buffer): void => {
      if (tp !== topic) return;
      const now = performance.now();
      if (first === 0) first = now;
      last = now;
      got += Buffer.byteLength((JSON.parse(payload.toString()) as OutputChunk).data);
    };
    c.mqtt.on('message', onMsg);
    await c.mqtt.subscribeAsync(topic, { qos: 0 });
    await c.waitFor(
      `${d.root}/job/${flood.jobId}/state`,
      (_t, pl) => {
        const s = (JSON.parse(pl.toString()) as JobRecord).state;
        return s !== 'queued' && s !== 'running';
      },
      600_000,
    );
    c.mqtt.off('message', onMsg);
    const outRate = got / ((last - first) / 1000);
    // Raw: 8 pings in flight, each carrying 256 KiB down and back up.
    const rawRate = await pingRate(agents, vm.id, BYTES);
    rows.push(
      { name: 'job output reaching a controller', value: round(outRate / 1048576), unit: 'MiB/s' },
      {
        name: 'raw channel (pipelined 256 KiB pings)',
        value: round(rawRate / 1048576),
        unit: 'MiB/s',
        note: 'each byte crosses twice (echo)',
      },
      {
        name: 'job output ÷ raw channel',
        value: round(outRate / rawRate),
        unit: 'ratio',
        ratio: outRate / rawRate,
        target: '>= 0.5',
      },
    );

    // --- pool VM vs warm service VM
    const poolReady = (): Promise<Buffer> =>
      c.waitFor(
        `${d.root}/pool/bench/state`,
        (_t, pl) => pl.length > 0 && (JSON.parse(pl.toString()) as PoolRecord).vms.ready >= 1,
        300_000,
      );
    const ready = poolReady();
    ok(await c.call('pool.set', { name: 'bench', min: 1, max: 1, memoryMiB: 256 }));
    await ready;
    const poolMs: number[] = [];
    const svcMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      poolMs.push(await timedJob(c, { pool: 'bench', argv: ['/bin/true'] }));
      svcMs.push(await timedJob(c, { vm: vm.id, argv: ['/bin/true'] }));
      await poolReady(); // refilled before the next round
    }
    ok(await c.call('pool.delete', { name: 'bench' }));
    const pm = median(poolMs);
    const sm = median(svcMs);
    rows.push(
      { name: 'job on a warm pool VM (p50 of 3)', value: round(pm), unit: 'ms' },
      { name: 'job on a warm service VM (p50 of 3)', value: round(sm), unit: 'ms' },
      {
        name: 'pool job ÷ service VM job',
        value: round(pm / sm),
        unit: 'ratio',
        ratio: pm / sm,
        target: '<= 3',
      },
    );
  } finally {
    await c.close();
    await d.stop();
    await removeDir(d.dataDir);
  }
  return rows;
}
