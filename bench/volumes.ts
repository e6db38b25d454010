/**
 * Volumes through mvirtd (a real daemon, QEMU under TCG for the guest half):
 *  - clone of a 1 GiB volume that holds 1 GiB of data (a byte pattern written
 *    with qemu-io into the raw file, not sparse): `volume.clone` as a qcow2
 *    overlay ÷ `volume.clone` as a full copy, target ≤ 0.01, each timed until
 *    the new file is on disk (cloneMs says why); medians of OVERLAY_ROUNDS
 *    and of FULL_ROUNDS (each full copy after a `sync`, its source in the
 *    host's page cache, as it is after the fill). An overlay is written
 *    in-process (qcow2-overlay.ts: under 1 ms with its fsync) where it once
 *    took two qemu-img runs (~17 ms); what is left is the RPC round trip and
 *    the row's commit.
 *  - sequential write and read inside the guest, one VM booted with a raw and
 *    a qcow2 volume: busybox dd (1.35 has oflag=direct and iflag=direct, so
 *    the guest's page cache is bypassed; no drop_caches needed), timed in the
 *    guest from /proc/uptime (10 ms ticks; the job's round trip is left out),
 *    each ÷ the same busybox dd on a file in the data folder on the host,
 *    timed around the process. Recorded, no target: TCG bounds the guest.
 *    QEMU opens volumes with the host's page cache (writeback), so the
 *    guest's direct I/O still lands in the host's cache; the host dd's does not.
 */
import { execFile as execFileCb } from 'node:child_process';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { imagesDir } from '../harness/build.js';
import { rpcClient, type RpcClient } from '../harness/client.js';
import { HOST_ID, spawnDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { FIND_DISK } from '../test/support/disks.js';
import { median, ok, round, type BenchRow } from './lib.js';

const execFile = promisify(execFileCb);

const GIB_MIB = 1024;
const OVERLAY_ROUNDS = 5;
const FULL_ROUNDS = 3;
/**
 * MiB per dd: large enough for /proc/uptime's 10 ms ticks (virtio-blk moves
 * 1 MiB requests at hundreds of MiB/s even under TCG), a second or two each.
 */
const DD_MIB = 256;

/** Fill a raw file with a byte pattern, 128 MiB per qemu-io request (its buffer is that big). */
async function fill(file: string, mib: number): Promise<void> {
  const cmds: string[] = [];
  for (let off = 0; off < mib; off += 128) cmds.push('-c', `write -q -P 0xa5 ${off}M 128M`);
  await execFile('qemu-io', ['-f', 'raw', ...cmds, file]);
}

/**
 * volume.clone until the new file is on disk, which is when mvirtd replies:
 * it fsyncs a full copy after qemu-img convert (whose default cache mode
 * never flushes) and an overlay as it writes it (qemu-img.ts,
 * qcow2-overlay.ts). Timing a `sync FILE` after the reply as well, as this
 * bench once did, only added a process spawn (~5-10 ms) to both.
 */
async function cloneMs(
  c: RpcClient,
  dataDir: string,
  from: string,
  name: string,
  mode: 'overlay' | 'full',
): Promise<number> {
  const t0 = performance.now();
  const v = ok(await c.call('volume.clone', { volume: from, name, mode }, { timeoutMs: 600_000 }));
  const ms = performance.now() - t0;
  ok(await c.call('volume.delete', { volume: v.id }));
  return ms;
}

async function cloneRows(c: RpcClient, dataDir: string): Promise<BenchRow[]> {
  const src = ok(await c.call('volume.create', { name: 'bench-1g', sizeMiB: GIB_MIB }));
  await fill(path.join(dataDir, 'volumes', `${src.id}.raw`), GIB_MIB);
  const used = ok(await c.call('volume.get', { volume: src.id })).usedBytes;
  if (used < GIB_MIB * 1024 * 1024) throw new Error(`the template holds only ${used} bytes`);
  const overlay: number[] = [];
  for (let i = 0; i < OVERLAY_ROUNDS; i++)
    overlay.push(await cloneMs(c, dataDir, src.id, `bench-ov-${i}`, 'overlay'));
  const full: number[] = [];
  for (let i = 0; i < FULL_ROUNDS; i++) {
    await execFile('sync');
    full.push(await cloneMs(c, dataDir, src.id, `bench-full-${i}`, 'full'));
  }
  ok(await c.call('volume.delete', { volume: src.id }));
  const ov = median(overlay);
  const fu = median(full);
  const fmt = (xs: number[]) => xs.map((x) => Math.round(x)).join(', ');
  return [
    {
      name: 'volume.clone 1 GiB overlay (copy-on-write)',
      value: round(ov, 1),
      unit: 'ms',
      note: `median of ${OVERLAY_ROUNDS} (${fmt(overlay)} ms), RPC round trip until on disk`,
    },
    {
      name: 'volume.clone 1 GiB full copy',
      value: round(fu, 0),
      unit: 'ms',
      note: `median of ${FULL_ROUNDS} (${fmt(full)} ms), until on disk; source in the page cache`,
    },
    {
      name: 'volume.clone overlay ÷ full copy (1 GiB of data)',
      value: round(ov / fu, 4),
      unit: 'ratio',
      ratio: ov / fu,
      target: '<= 0.01',
    },
  ];
}

/** Seconds of the write and the read of DD_MIB on $D, from the guest's /proc/uptime. */
const GUEST_DD =
  `${FIND_DISK}; ` +
  'read a x < /proc/uptime; ' +
  `dd if=/dev/zero of=$D bs=1M count=${DD_MIB} oflag=direct 2>/dev/null || exit 7; ` +
  'read b x < /proc/uptime; ' +
  `dd if=$D of=/dev/null bs=1M count=${DD_MIB} iflag=direct 2>/dev/null || exit 8; ` +
  'read e x < /proc/uptime; echo "$a $b $e"';

async function guestDd(c: RpcClient, vm: string, id: string) {
  const r = ok(
    await c.call(
      'job.run',
      { vm, argv: ['sh', '-c', GUEST_DD], env: { ID: id }, wait: true },
      { timeoutMs: 300_000 },
    ),
  );
  if (r.exitCode !== 0) throw new Error(`guest dd on ${id} exited ${r.exitCode}: ${r.stderr}`);
  const [a, b, e] = r.stdout!.trim().split(/\s+/).map(Number) as [number, number, number];
  // A tick is 10 ms: never divide by 0.
  return { write: DD_MIB / Math.max(b - a, 0.01), read: DD_MIB / Math.max(e - b, 0.01) };
}

async function hostDd(dataDir: string) {
  const file = path.join(dataDir, 'host-dd.bin');
  const timed = async (args: string[]) => {
    const t0 = performance.now();
    await execFile('busybox', ['dd', ...args]);
    return (performance.now() - t0) / 1000;
  };
  const w = await timed(['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${DD_MIB}`, 'oflag=direct']);
  const r = await timed([`if=${file}`, 'of=/dev/null', 'bs=1M', `count=${DD_MIB}`, 'iflag=direct']);
  await rm(file, { force: true });
  return { write: DD_MIB / w, read: DD_MIB / r };
}

async function ddRows(c: RpcClient, dataDir: string): Promise<BenchRow[]> {
  const size = DD_MIB + 16;
  const raw = ok(await c.call('volume.create', { name: 'bench-raw', sizeMiB: size }));
  const qcow = ok(
    await c.call('volume.create', { name: 'bench-qcow2', sizeMiB: size, format: 'qcow2' }),
  );
  ok(
    await c.call('vm.create', {
      name: 'dd',
      memoryMiB: 256,
      disks: [{ volume: raw.id }, { volume: qcow.id }],
    }),
  );
  ok(await c.call('vm.start', { vm: 'dd', wait: true }, { timeoutMs: 300_000 }));
  const host = await hostDd(dataDir);
  const rows: BenchRow[] = [];
  for (const v of [raw, qcow]) {
    const g = await guestDd(c, 'dd', v.id);
    for (const op of ['write', 'read'] as const)
      rows.push({
        name: `guest sequential ${op}, ${v.format} volume ÷ host`,
        value: round(g[op] / host[op], 3),
        unit: 'ratio',
        note: `${round(g[op], 1)} MiB/s in the guest (TCG), ${round(host[op], 1)} MiB/s on the host; dd ${DD_MIB} × 1 MiB, direct`,
      });
  }
  return rows;
}

export default async function volumes(emit: (rows: BenchRow[]) => void): Promise<BenchRow[]> {
  const IMAGES = await imagesDir();
  const dataDir = await makeTempDir('mvirt-bench-volumes-');
  const d = await spawnDaemon([
    ...['--data-dir', dataDir, '--images-dir', IMAGES, '--host-id', HOST_ID],
    ...['--listen', '127.0.0.1:0', '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  ]);
  const c = await rpcClient(d);
  try {
    // The clone rows are kept if the guest half (a boot under TCG) fails.
    emit(await cloneRows(c, dataDir));
    return await ddRows(c, dataDir);
  } finally {
    c.mqtt.end(true);
    d.child.kill('SIGTERM');
    await d.exited;
    await removeDir(dataDir);
  }
}
