/**
 * Networking figures, side by side in one run, with mvirtd inside a network
 * namespace of its own (root needed; the machine's interfaces are untouched
 * but for one veth end, below):
 *
 *  - VM start → ready (the agent's readyAtMs, from hypervisor spawn) with
 *    bridge networking ÷ without (target ≤ 1.1), rounds alternated so that
 *    machine drift hits both alike;
 *  - guest → host TCP throughput over the bridge ÷ over user-mode networking:
 *    the guest POSTs a 24 MiB file with busybox wget to an HTTP sink in the
 *    namespace, timed by the guest's own clock.
 *
 * User-mode means passt (host/network/passt.ts) started with `--no-map-gw`:
 * the guest's gateway 10.0.2.2 is not the host, and passt turns the guest's
 * connection into a socket connect from its own namespace, here mvirtd's.
 * So the user-mode upload goes to the namespace's own "external" address,
 * the way test/integration/network-qemu.test.ts reaches the host, and the
 * bridged upload to the bridge address; the sink listens on 0.0.0.0, which
 * both reach.
 *
 * Why the veth: passt refuses to start without an external routable
 * interface ("No external routable interface for IPv4"), and a bare
 * namespace has only `lo` and the bridge mvirtd creates, with no default
 * route. A veth pair gives it one: VETH_NS (10.250.0.2/24, `default via
 * 10.250.0.1`) in the namespace, VETH_HOST (10.250.0.1/24) in the root
 * namespace. Nothing is routed or forwarded over it during the run; both
 * ends go at the end, also on failure.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { imagesDir } from '../harness/build.js';
import { rpcClient, type RpcClient } from '../harness/client.js';
import { removeDir, makeTempDir } from '../harness/paths.js';
import { HOST_ID, spawnDaemon, type DaemonProcess } from '../harness/daemon.js';
import { median, ok, round, type BenchRow } from './lib.js';

const NS = `mvirt-b${process.pid}`;
const ROUNDS = 3;
const BLOB_MIB = 24;
const SINK_PORT = 18080;
const VETH_HOST = `vb${process.pid}h`;
const VETH_NS = `vb${process.pid}n`;
const VETH_HOST_IP = '10.250.0.1';
/** The namespace's "external" address, the user-mode upload's target. */
const VETH_NS_IP = '10.250.0.2';
const BRIDGE_IP = '10.213.0.1';

/** A one-file HTTP sink: reads the whole body, answers with its size. */
const SINK = `require('http').createServer((q, s) => { let n = 0;
  q.on('data', (b) => (n += b.length)); q.on('end', () => s.end(String(n))); })
  .listen(${SINK_PORT}, '0.0.0.0', () => console.log('listening'));`;

export default async function network(): Promise<BenchRow[]> {
  if (process.getuid?.() !== 0 || spawnSync('ip', ['-V']).status !== 0)
    return [{ name: 'network', value: NaN, unit: '', note: 'needs root and iproute2' }];

  const IMAGES = await imagesDir();
  const inNs = (...argv: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...argv]);
  const cleanNet = (): void => {
    spawnSync('ip', ['netns', 'del', NS]); // takes the namespace's veth end along
    spawnSync('ip', ['link', 'del', VETH_HOST]); // gone with its peer already, normally
  };
  cleanNet();
  let dataDir: string | undefined;
  let d: DaemonProcess | undefined;
  let sink: ChildProcess | undefined;
  let client: RpcClient | undefined;
  const rows: BenchRow[] = [];
  try {
    execFileSync('ip', ['netns', 'add', NS]);
    inNs('ip', 'link', 'set', 'lo', 'up');
    // The namespace's external interface, for passt (see the header).
    const veth = ['type', 'veth', 'peer', 'name', VETH_NS, 'netns', NS];
    execFileSync('ip', ['link', 'add', VETH_HOST, ...veth]);
    execFileSync('ip', ['addr', 'add', `${VETH_HOST_IP}/24`, 'dev', VETH_HOST]);
    execFileSync('ip', ['link', 'set', VETH_HOST, 'up']);
    inNs('ip', 'addr', 'add', `${VETH_NS_IP}/24`, 'dev', VETH_NS);
    inNs('ip', 'link', 'set', VETH_NS, 'up');
    inNs('ip', 'route', 'add', 'default', 'via', VETH_HOST_IP);

    dataDir = await makeTempDir('mvirt-bench-net-');
    d = await spawnDaemon(
      [
        ...['--data-dir', dataDir, '--images-dir', IMAGES, '--host-id', HOST_ID],
        ...['--listen', 'off', '--bridge', 'mvirt0', '--network', 'bridge', '--guest-dns', 'off'],
        ...['--boot-timeout-ms', '300000', '--stop-vms-on-exit'],
      ],
      { netns: NS },
    );
    sink = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', SINK], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const sinkUp = sink;
    await new Promise((resolve, reject) => {
      sinkUp.stdout!.once('data', resolve);
      sinkUp.once('exit', (code) => reject(new Error(`the HTTP sink exited (${code})`)));
    });
    const c = (client = await rpcClient(d));
    const bootOnce = async (name: string, mode: 'none' | 'bridge'): Promise<number> => {
      ok(await c.call('vm.create', { name, memoryMiB: 256, network: { mode } }));
      const vm = ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: 300_000 }));
      ok(await c.call('vm.kill', { vm: name }));
      ok(await c.call('vm.delete', { vm: name }));
      return vm.boot?.readyAtMs ?? NaN;
    };
    const none: number[] = [];
    const bridge: number[] = [];
    await bootOnce('warm', 'none'); // page cache, QEMU binary
    for (let i = 0; i < ROUNDS; i++) {
      none.push(await bootOnce(`n${i}`, 'none'));
      bridge.push(await bootOnce(`b${i}`, 'bridge'));
    }
    const [mn, mb] = [median(none), median(bridge)];
    rows.push({
      name: 'start→ready, bridge ÷ no network',
      value: round(mb / mn, 3),
      unit: '×',
      ratio: mb / mn,
      target: '<= 1.1',
      note: `${Math.round(mb)} vs ${Math.round(mn)} ms (median of ${ROUNDS}, TCG)`,
    });

    // Throughput: one VM per mode, the same upload.
    const upload = async (mode: 'bridge' | 'user'): Promise<number> => {
      const name = `tp-${mode}`;
      ok(await c.call('vm.create', { name, memoryMiB: 256, network: { mode } }));
      ok(await c.call('vm.start', { vm: name, wait: true }, { timeoutMs: 300_000 }));
      // passt --no-map-gw: not 10.0.2.2, the namespace's external address.
      const host = mode === 'bridge' ? BRIDGE_IP : VETH_NS_IP;
      const script = [
        // Not zeros: busybox wget posts the file as a C string (it stops at a NUL).
        `yes 0123456789abcdef | head -c ${BLOB_MIB << 20} >/tmp/blob`,
        'a=$(cut -d" " -f1 /proc/uptime)',
        `wget -q -O - --post-file /tmp/blob http://${host}:${SINK_PORT}/`,
        'echo',
        'b=$(cut -d" " -f1 /proc/uptime)',
        'echo "$a $b"',
      ].join('; ');
      const best: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const r = ok(
          await c.call(
            'job.run',
            { vm: name, argv: ['sh', '-c', script], wait: true },
            { timeoutMs: 300_000 },
          ),
        );
        const [bytes, times] = (r.stdout ?? '').trim().split('\n');
        const [a, b] = times!.split(' ').map(Number);
        if (Number(bytes) !== BLOB_MIB << 20) throw new Error(`${mode}: sink got ${bytes} bytes`);
        best.push(BLOB_MIB / (b! - a!));
      }
      ok(await c.call('vm.kill', { vm: name }));
      return median(best);
    };
    const tb = await upload('bridge');
    const tu = await upload('user');
    rows.push({
      name: 'guest→host TCP, bridge ÷ user-mode',
      value: round(tb / tu, 2),
      unit: '×',
      ratio: tb / tu,
      note: `${round(tb, 1)} vs ${round(tu, 1)} MiB/s (${BLOB_MIB} MiB HTTP POST, median of ${ROUNDS}, TCG)`,
    });
  } finally {
    client?.mqtt.end(true);
    if (d) {
      d.child.kill('SIGTERM');
      await d.exited;
    }
    sink?.kill('SIGKILL');
    cleanNet();
    if (dataDir) await removeDir(dataDir);
  }
  return rows;
}
