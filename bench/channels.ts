/**
 * The agent channel's throughput, hybrid vsock ÷ virtio-serial (issue 15's
 * Targets: recorded, no target), measured side by side through mvirtd:
 *  - vsock: a VM on the fake cloud-hypervisor (harness/fake-vmm/), whose
 *    guest is the real agent core on this host dialling `<uds>_1024` through
 *    the µOS's relay helper (initramfs/src/vsock-connect.c, unix mode), with
 *    mvirtd's hybrid-vsock listener on the other end;
 *  - virtio-serial: a real µOS VM under QEMU (TCG here), its agent on the
 *    port `mvirt.agent`, mvirtd on QEMU's chardev socket.
 * Both as jobs.ts's "raw channel" row: 8 agent pings in flight, each carrying
 * 256 KiB down and back up, 32 MiB in all, after a 4 MiB warm-up; median of 3.
 * The fake's guest runs natively while the QEMU guest is emulated, so the
 * ratio is what the guest side costs here, not what KVM would show; a real
 * VMM also adds its own vsock copy, which the fake does not have.
 * Seen 2026-12-07 (2 cores, with other QEMU guests running, load 4–7):
 * vsock 32.0 MiB/s, virtio-serial 4.4 MiB/s, ratio 7.2.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { createCloudHypervisorBackend } from '../host/hypervisors/cloud-hypervisor/backend.js';
import { imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon, testLogger, type TestDaemon } from '../harness/daemon.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { fakeVmmBinary } from '../test/support/backend-cases.js';
import { median, ok, pingRate, round, type BenchRow } from './lib.js';

const BYTES = 32 * 1024 * 1024;
const WARMUP = 4 * 1024 * 1024;
const RUNS = 3;

async function measure(d: TestDaemon, name: string, params: object): Promise<number> {
  const c = await rpcClient(d);
  try {
    ok(await c.call('vm.create', { name, memoryMiB: 256, kind: 'service', ...params }));
    const vm = ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: 300_000 }));
    await pingRate(d.daemon.agents, vm.id, WARMUP);
    const rates: number[] = [];
    for (let i = 0; i < RUNS; i++) rates.push(await pingRate(d.daemon.agents, vm.id, BYTES));
    await c.call('vm.kill', { vm: name });
    return median(rates);
  } finally {
    await c.close().catch(() => undefined);
  }
}

export default async function channels(): Promise<BenchRow[]> {
  const tmp = await makeTempDir('mvirt-bench-ch-');
  const kvm = path.join(tmp, 'kvm');
  writeFileSync(kvm, '');
  let vsock: number;
  const fake = await startTestDaemon({
    hypervisors: [
      createCloudHypervisorBackend(
        {
          binary: fakeVmmBinary('cloud-hypervisor'),
          kvmPath: kvm,
          agentConnectTimeoutMs: 20_000,
          launchTimeoutMs: 20_000,
        },
        testLogger() as unknown as Logger,
      ),
    ],
    args: ['--default-backend', 'cloud-hypervisor'],
  });
  try {
    vsock = await measure(fake, 'bench-vsock', { backend: 'cloud-hypervisor' });
  } finally {
    await fake.stop();
    await removeDir(fake.dataDir);
    await removeDir(tmp);
  }

  const IMAGES = await imagesDir();
  const qemu = await startTestDaemon({
    args: ['--images-dir', IMAGES, '--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
  });
  let serial: number;
  try {
    serial = await measure(qemu, 'bench-serial', {});
  } finally {
    await qemu.stop();
    await removeDir(qemu.dataDir);
  }
  const mib = (v: number) => round(v / 1048576, 1);
  return [
    {
      name: 'agent channel: hybrid vsock (fake cloud-hypervisor, relay helper)',
      value: mib(vsock),
      unit: 'MiB/s',
      note: `pipelined 256 KiB pings ×8, each byte both ways; median of ${RUNS}`,
    },
    {
      name: 'agent channel: virtio-serial (QEMU, TCG)',
      value: mib(serial),
      unit: 'MiB/s',
      note: 'the same pings on a real µOS VM',
    },
    {
      name: 'hybrid vsock ÷ virtio-serial agent channel',
      value: round(vsock / serial),
      unit: 'ratio',
      ratio: vsock / serial,
      note: 'recorded (no target): the fake guest is native, the QEMU guest emulated',
    },
  ];
}
