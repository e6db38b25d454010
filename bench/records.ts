/**
 * What the client's record validation costs (protocol/client.ts `checked`):
 * decoding a reply with JSON.parse alone against JSON.parse plus the method's
 * result schema (RESULTS in protocol/rpc.ts), for a 40-VM vm.list, one VM and
 * one job record. The ratio is validated ÷ unvalidated time; its target is a
 * ceiling (validation may cost at most three more decodes), and the absolute
 * figures compare with a broker round trip (about a millisecond: bench/broker).
 */
import { RESULTS, type RpcMethod } from '../protocol/rpc.js';
import { median, round, type BenchRow } from './lib.js';

const N = 2000;
const RUNS = 5;
const at = '2026-01-01T00:00:00.000Z';

const vm = (i: number): Record<string, unknown> => ({
  id: `vm-${i.toString(16).padStart(12, '0')}`,
  name: `web-${i}`,
  state: 'ready',
  vcpus: 1,
  memoryMiB: 256,
  kind: 'service',
  image: 'default',
  backend: 'qemu',
  network: { mode: 'user' },
  metadata: { role: 'web' },
  createdAt: at,
  updatedAt: at,
  startedAt: at,
  accel: 'tcg',
  pid: 1234 + i,
  boot: { initS: 1.2, agentStartS: 1.5, connectedS: 2.1, readyAtMs: 4200 },
  agentVersion: '0.1.0',
});

const job = {
  jobId: 'job-0123456789ab',
  vm: 'vm-000000000001',
  target: { kind: 'vm', vm: 'web-1' },
  argv: ['sh', '-c', 'echo hi'],
  state: 'succeeded',
  exitCode: 0,
  signal: null,
  oomKilled: false,
  createdAt: at,
  startedAt: at,
  finishedAt: at,
  nextSeq: 3,
  outputBytes: 12,
  dropped: { chunks: 0, bytes: 0 },
};

const CASES: [string, RpcMethod, unknown][] = [
  ['vm.list, 40 VMs', 'vm.list', { vms: Array.from({ length: 40 }, (_, i) => vm(i)) }],
  ['vm.get', 'vm.get', vm(1)],
  ['job.get', 'job.get', job],
];

/** µs per decode, the median of RUNS runs of N. */
function perDecode(f: () => void): number {
  const runs: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now();
    for (let i = 0; i < N; i++) f();
    runs.push(((performance.now() - t) * 1000) / N);
  }
  return median(runs);
}

export default function recordsBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const [name, method, value] of CASES) {
    const text = JSON.stringify(value);
    const schema = RESULTS[method];
    schema.parse(JSON.parse(text)); // the case must be a valid reply
    for (let i = 0; i < 1000; i++) schema.parse(JSON.parse(text)); // warm-up
    const plain = perDecode(() => JSON.parse(text));
    const checked = perDecode(() => schema.parse(JSON.parse(text)));
    rows.push({
      name: `${name} reply (${text.length} B): decode + validate`,
      value: round(checked, 1),
      unit: 'µs',
      note: `JSON.parse alone ${round(plain, 1)} µs`,
      ratio: round(checked / plain, 2),
      target: '<= 4',
    });
  }
  return Promise.resolve(rows);
}
