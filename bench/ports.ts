/**
 * Port forwarding (issue 17's target): download MiB/s through a port forward
 * ÷ raw agent-channel MiB/s ≥ 0.5, side by side on one real µOS VM under
 * QEMU (TCG here), its network mode none (only the agent channel):
 *  - port-forward: busybox httpd in the guest (on its loopback) serves a
 *    16 MiB file; mvirtd's forward carries 4 downloads at once, timed from
 *    the first request to the last byte;
 *  - raw: as jobs.ts's "raw channel" row, 8 agent pings in flight carrying
 *    256 KiB each, counted one way (each byte also comes back).
 * Alternated raw, forward, raw, forward… RUNS times; medians.
 * Seen 2026-12-07 (2 cores, TCG, other engineers' QEMU guests running):
 * load ~20: forward 0.51 MiB/s, raw 0.59, ratio 0.86; load ~5: forward
 * 7.3 MiB/s, raw 7.5, ratio 0.97; load ~2: forward 15.7 MiB/s, raw 12.6,
 * ratio 1.25 (a download sends each byte once; a ping carries it both ways).
 */
import { createHash } from 'node:crypto';
import { get } from 'node:http';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { removeDir } from '../harness/paths.js';
import { median, ok, pingRate, round, type BenchRow } from './lib.js';

const FILE = 16 * 1024 * 1024;
const PARALLEL = 4;
const RAW_BYTES = 32 * 1024 * 1024;
const RUNS = 3;

function download(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      const h = createHash('sha256');
      let n = 0;
      res.on('data', (b: Buffer) => {
        n += b.length;
        h.update(b);
      });
      res.on('end', () => resolve(n));
      res.on('error', reject);
    }).on('error', reject);
  });
}

export default async function ports(): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  const d = await startTestDaemon({
    args: ['--images-dir', IMAGES, '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  });
  const c = await rpcClient(d);
  try {
    ok(await c.call('vm.create', { name: 'bench-pf', memoryMiB: 256, network: { mode: 'none' } }));
    const vm = ok(await c.call('vm.start', { vm: 'bench-pf', wait: true }, { timeoutMs: 300_000 }));
    const made = ok(
      await c.call(
        'job.run',
        {
          vm: vm.id,
          argv: [
            'sh',
            '-c',
            `mkdir -p /tmp/www && head -c ${FILE} /dev/zero > /tmp/www/f && httpd -p 127.0.0.1:8080 -h /tmp/www`,
          ],
          wait: true,
        },
        { timeoutMs: 300_000 },
      ),
    );
    if (made.exitCode !== 0) throw new Error(`httpd did not start: ${made.stderr}`);
    const fwd = ok(await c.call('port.forward', { vm: vm.id, guestPort: 8080 }));
    const url = `http://127.0.0.1:${fwd.port}/f`;

    const forwardRate = async (): Promise<number> => {
      const t0 = performance.now();
      const sizes = await Promise.all(Array.from({ length: PARALLEL }, () => download(url)));
      const bytes = sizes.reduce((a, b) => a + b, 0);
      if (bytes !== PARALLEL * FILE) throw new Error(`downloaded ${bytes} of ${PARALLEL * FILE}`);
      return bytes / ((performance.now() - t0) / 1000);
    };
    const rawRate = (): Promise<number> => pingRate(d.daemon.agents, vm.id, RAW_BYTES);
    // Warm-up (the TCG translation cache, the agent's first paths).
    await download(url);
    const raw: number[] = [];
    const pf: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      raw.push(await rawRate());
      pf.push(await forwardRate());
    }
    ok(await c.call('port.close', { id: fwd.id }));
    await c.call('vm.kill', { vm: vm.id });
    const mib = (v: number) => round(v / 1048576, 2);
    const r = median(raw);
    const p = median(pf);
    return [
      {
        name: 'port-forward download (4 at once, 16 MiB each)',
        value: mib(p),
        unit: 'MiB/s',
        note: `runs ${pf.map(mib).join(', ')}`,
      },
      {
        name: 'raw agent channel (pipelined 256 KiB pings)',
        value: mib(r),
        unit: 'MiB/s',
        note: `one way, each byte also comes back; runs ${raw.map(mib).join(', ')}`,
      },
      {
        name: 'port-forward ÷ raw agent channel',
        value: round(p / r),
        unit: 'ratio',
        ratio: p / r,
        target: '>= 0.5',
      },
    ];
  } finally {
    await c.close().catch(() => undefined);
    await d.stop();
    await removeDir(d.dataDir);
  }
}
