/**
 * mvirt jobs vs QEMU's guest agent (issue target, "record it; the goal is ≥ 10"):
 * the same `/bin/true` in the same kind of VM (the bench-qga image: the µOS
 * plus Debian's qemu-guest-agent, built on first use from bench/qga/recipe.json),
 * once as an mvirt job through mvirtd (job.run {wait}) and once through
 * qemu-guest-agent's `guest-exec` followed by `guest-exec-status` polled back
 * to back (no sleep between polls: the best case for guest-exec), on a QEMU
 * started here with the agent's virtio-serial port.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { buildQemuArgs, optValue, qemuPaths } from '../host/hypervisors/qemu/args.js';
import {
  makeConsoleFifos,
  startConsolePump,
  type ConsolePump,
} from '../host/hypervisors/console-pump.js';
import { pino } from 'pino';
import { createImageStore } from '../host/vm/images.js';
import { rpcClient } from '../harness/client.js';
import { startTestDaemon } from '../harness/daemon.js';
import { imagesDir } from '../harness/build.js';
import { removeDir } from '../harness/paths.js';
import { medianOf, ok, round, timedJob, type BenchRow } from './lib.js';

const ROUNDS = 25;
const BOOT_WAIT_MS = 300_000;

/** Line-delimited JSON over qemu-ga's socket (the QMP wire format, no greeting). */
function qgaClient(sock: net.Socket) {
  let buf = '';
  const waiting: ((v: Record<string, unknown>) => void)[] = [];
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) waiting.shift()?.(JSON.parse(line) as Record<string, unknown>);
    }
  });
  return (execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> =>
    new Promise((resolve) => {
      waiting.push(resolve);
      sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    });
}

async function connectWhenThere(p: string, deadline: number): Promise<net.Socket> {
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection({ path: p });
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function measureQga(IMAGES: string): Promise<number> {
  const image = await createImageStore(IMAGES).resolve('bench-qga');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-qga-'));
  const paths = qemuPaths(dir);
  const qgaSock = path.join(dir, 'qga.sock');
  const args = [
    ...buildQemuArgs({
      spec: {
        vmId: 'vm-benchqga',
        vcpus: 1,
        memoryMiB: 256,
        kernel: image.kernel,
        initrd: image.initrd,
        cmdline: image.cmdline,
        disks: image.disk ? [{ path: image.disk, readOnly: true }] : [],
        dir,
        channel: 'virtio-serial',
        agentArgs: {},
        network: { mode: 'none' },
        consoleLogBytes: 1 << 20,
      },
      accel: 'tcg',
      machine: 'pc',
      paths,
      tcgTbSizeMiB: 128,
      sandbox: true,
    }).filter((a) => a !== '-S'),
    '-chardev',
    `socket,id=qga,path=${optValue(qgaSock)},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0',
  ];
  // The serial console is two FIFOs mvirtd makes and reads (console.ts), as the backend does.
  await makeConsoleFifos(paths.console);
  const qemu = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  let pump: ConsolePump | undefined;
  try {
    const sock = await connectWhenThere(qgaSock, Date.now() + 30_000);
    // QEMU holds the FIFOs open once its sockets are there.
    pump = await startConsolePump({
      source: { kind: 'pipe', base: paths.console },
      logFile: paths.consoleLog,
      maxLogBytes: 1 << 20,
      connect: { timeoutMs: 30_000 },
      log: pino({ level: 'silent' }),
    });
    const call = qgaClient(sock);
    // Until the guest's qemu-ga answers, guest-sync goes unanswered: retry.
    const deadline = Date.now() + BOOT_WAIT_MS;
    for (let id = 1; ; id++) {
      const r = await Promise.race([
        call('guest-sync', { id }),
        new Promise<null>((res) => setTimeout(() => res(null), 2000)),
      ]);
      if (r && r.return === id) break;
      if (Date.now() > deadline) throw new Error('qemu-ga did not answer');
    }
    const once = async (): Promise<number> => {
      const t0 = performance.now();
      const started = await call('guest-exec', { path: '/bin/true', 'capture-output': true });
      const pid = (started.return as { pid: number }).pid;
      for (;;) {
        const st = await call('guest-exec-status', { pid });
        if ((st.return as { exited: boolean }).exited) break;
      }
      return performance.now() - t0;
    };
    const ms = await medianOf(once, ROUNDS);
    sock.destroy();
    return ms;
  } finally {
    qemu.kill('SIGKILL');
    pump?.close();
    await pump?.closed;
    await pump?.log.flush();
    await rm(dir, { recursive: true, force: true });
  }
}

async function measureMvirt(IMAGES: string): Promise<number> {
  const d = await startTestDaemon({
    args: ['--images-dir', IMAGES, '--boot-timeout-ms', String(BOOT_WAIT_MS), '--stop-vms-on-exit'],
  });
  const c = await rpcClient(d);
  try {
    await c.call('vm.create', { name: 'qga-cmp', image: 'bench-qga', memoryMiB: 256 });
    const vm = ok(
      await c.call('vm.start', { vm: 'qga-cmp', wait: true }, { timeoutMs: BOOT_WAIT_MS }),
    );
    return await medianOf(() => timedJob(c, { vm: vm.id, argv: ['/bin/true'] }), ROUNDS);
  } finally {
    await c.close();
    await d.stop();
    await removeDir(d.dataDir);
  }
}

export default async function qga(): Promise<BenchRow[]> {
  // Built on first use (cached afterwards) beside the bench's default image.
  const images = await imagesDir({ recipe: 'bench/qga/recipe.json' });
  const mvirt = await measureMvirt(images);
  const ga = await measureQga(images);
  return [
    { name: 'mvirt job /bin/true (bench-qga image, p50)', value: round(mvirt), unit: 'ms' },
    { name: 'qemu-ga guest-exec + status polling (p50)', value: round(ga), unit: 'ms' },
    {
      name: 'qemu-ga ÷ mvirt',
      value: round(ga / mvirt),
      unit: 'ratio',
      ratio: ga / mvirt,
      target: '>= 10',
      note: 'polling back to back, the best case for guest-exec',
    },
  ];
}
