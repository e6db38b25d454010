/**
 * Cold boot → ready of an imported container image beside the default µOS
 * image it is based on, alternated in one run on one mvirtd (recorded, issue
 * 19). The imported image boots the same kernel, initrd and µOS disk (hard
 * links, images/oci/); what it adds is its own root disk, which rcS mounts
 * under an overlay before the agent starts. The image: busybox and a
 * 20 MiB layer, made here as an OCI layout. Median of MVIRT_BENCH_RUNS
 * boots each (default 2).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { importImage } from '../images/oci/import.js';
import { makeTar, writeOciLayout, type Entry } from '../test/support/oci.js';
import { median, ok, type BenchRow } from './lib.js';

const RUNS = Number(process.env.MVIRT_BENCH_RUNS ?? 2);
const BOOT_MS = 600_000; // TCG on a busy 2-core host; the figure is what matters

export default async function imageBoot(): Promise<BenchRow[]> {
  const built = await imagesDir();
  const dir = await makeTempDir();
  await chmod(dir, 0o755); // the images are read by each VM's own (confined) QEMU user
  const images = path.join(dir, 'images');
  await mkdir(images);
  await symlink(path.join(built, 'default'), path.join(images, 'default'));
  const busybox = execFileSync(
    'unsquashfs',
    ['-cat', path.join(built, 'default', 'rootfs.squashfs'), 'usr/bin/busybox'],
    { maxBuffer: 64 << 20 },
  );
  const layer: Entry[] = [
    { name: 'bin/' },
    { name: 'bin/busybox', body: busybox, mode: 0o755 },
    { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
    { name: 'data/' },
    ...Array.from({ length: 20 }, (_, i): Entry => ({
      name: `data/${i}.bin`,
      body: randomBytes(1 << 20),
    })),
  ];
  const oci = path.join(dir, 'oci');
  await writeOciLayout(oci, { layers: [await makeTar(layer)], env: ['PATH=/bin'] });
  await importImage({
    source: oci,
    name: 'bench-imported',
    imagesDir: images,
    cacheDir: path.join(dir, 'cache'),
    log: () => undefined,
  });

  const d = await startTestDaemon({
    args: ['--images-dir', images, '--boot-timeout-ms', String(BOOT_MS), '--stop-vms-on-exit'],
  });
  const c = await rpcClient(d);
  const boot = async (image: string, name: string): Promise<number> => {
    ok(await c.call('vm.create', { name, image, memoryMiB: 256 }));
    const t0 = performance.now();
    ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: BOOT_MS + 10_000 }));
    const ms = performance.now() - t0;
    ok(await c.call('vm.kill', { vm: name }, { timeoutMs: 60_000 }));
    ok(await c.call('vm.delete', { vm: name }, { timeoutMs: 60_000 }));
    return ms;
  };
  try {
    const plain: number[] = [];
    const imported: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      plain.push(await boot('default', `boot-default-${i}`));
      imported.push(await boot('bench-imported', `boot-imported-${i}`));
    }
    const p = median(plain);
    const m = median(imported);
    const ms = (xs: number[]): string => xs.map((x) => Math.round(x)).join(', ');
    return [
      {
        name: 'image boot: default µOS, start → ready',
        value: Math.round(p),
        unit: 'ms',
        note: `boots ${ms(plain)}`,
      },
      {
        name: 'image boot: imported image, start → ready',
        value: Math.round(m),
        unit: 'ms',
        ratio: m / p,
        note: `recorded (issue 19): ÷ default = ${(m / p).toFixed(2)}; boots ${ms(imported)}; its root disk mounted by rcS`,
      },
    ];
  } finally {
    await c.close();
    await d.stop();
    await removeDir(dir);
    await removeDir(d.dataDir);
  }
}
