/**
 * mvirtd benches (issue targets):
 *  - system.info round trip ÷ raw publish/subscribe echo through the same broker (≤ 1.5)
 *  - vm.list over 10,000 stored VMs ÷ the raw SQLite query (≤ 5)
 *  - mvirtd RSS with 50 defined and 4 running VMs (≤ 120 MiB); the 4 run under
 *    QEMU, on the default image built (cached) into bench-output/data.
 */
import { readFileSync } from 'node:fs';
import { ensureBuilt, imagesDir } from '../harness/build.js';
import { rpcClient } from '../harness/client.js';
import { connectController } from '../harness/connect.js';
import { TEST_ADMIN } from '../harness/test-admin.js';
import { HOST_ID, spawnDaemon, startTestDaemon, stopProcess } from '../harness/daemon.js';
import { createFakeHypervisor, killFakes } from '../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../harness/paths.js';
import { echoRoundTrip, measureRoundTrips, ok, round, type BenchRow } from './lib.js';

async function rpcVersusEcho(): Promise<BenchRow[]> {
  const hv = createFakeHypervisor();
  const d = await startTestDaemon({ hypervisors: [hv] });
  try {
    // Loopback TCP as the test admin (the login is per connection, not per request).
    const url = `mqtt://${TEST_ADMIN.username}:${TEST_ADMIN.password}@${d.daemon.broker.addresses.tcp!}`;
    const echo = await echoRoundTrip({ bus: d.daemon.broker, url, count: 2000 });
    const client = await connectController(url, { clientId: 'bench-info' });
    const replyTopic = 'mvirt/_clients/bench-info/replies';
    const info = await measureRoundTrips({
      client,
      requestTopic: `${d.root}/rpc/system.info`,
      replyTopic,
      payload: (i) => `{"id":"i-${i}","replyTo":"${replyTopic}"}`,
      count: 2000,
    });
    await client.endAsync();
    return [
      { name: 'raw echo round trip (p50)', value: round(echo.p50Ms, 3), unit: 'ms' },
      { name: 'system.info round trip (p50)', value: round(info.p50Ms, 3), unit: 'ms' },
      {
        name: 'system.info ÷ raw echo',
        value: round(info.p50Ms / echo.p50Ms, 2),
        unit: 'ratio',
        ratio: info.p50Ms / echo.p50Ms,
        target: '<= 1.5',
        note: `means ${round(info.meanMs, 3)} vs ${round(echo.meanMs, 3)} ms`,
      },
    ];
  } finally {
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
  }
}

async function listVersusRaw(): Promise<BenchRow[]> {
  const hv = createFakeHypervisor();
  const d = await startTestDaemon({ hypervisors: [hv] });
  try {
    const store = d.daemon.store;
    store.db.transaction(() => {
      for (let i = 0; i < 10_000; i++) {
        store.vms.insert({
          id: `vm-b${i.toString(16).padStart(8, '0')}`,
          name: `bench-${i}`,
          vcpus: 1,
          memoryMiB: 256,
          kind: 'service',
          image: 'default',
          backend: 'qemu',
          network: { mode: 'none' },
          metadata: {},
        });
      }
    })();
    const raw = store.db.prepare('SELECT * FROM vms');
    const tRaw = timeIt(() => raw.all());
    const tList = timeIt(() => d.daemon.vms.list());
    // The same through the API, for the record (adds JSON and MQTT transfer of ~4 MB).
    const c = await rpcClient(d);
    await c.call('vm.list', undefined, { timeoutMs: 30_000 });
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) await c.call('vm.list', undefined, { timeoutMs: 30_000 });
    const tRpc = (performance.now() - t0) / 5;
    await c.close();
    return [
      { name: 'raw SELECT * FROM vms (10,000 rows)', value: round(tRaw, 2), unit: 'ms' },
      { name: 'vm.list in the daemon (10,000 VMs)', value: round(tList, 2), unit: 'ms' },
      {
        name: 'vm.list ÷ raw query',
        value: round(tList / tRaw, 2),
        unit: 'ratio',
        ratio: tList / tRaw,
        target: '<= 5',
      },
      {
        name: 'vm.list RPC round trip (10,000 VMs, JSON)',
        value: round(tRpc, 1),
        unit: 'ms',
        note: 'includes JSON encoding and MQTT transfer',
      },
    ];
  } finally {
    await d.stop();
    killFakes(hv);
    await removeDir(d.dataDir);
  }
}

async function rss(): Promise<BenchRow[]> {
  const images = await imagesDir();
  const dataDir = await makeTempDir('mvirt-bench-rss-');
  // mvirtd as shipped (the esbuild bundle in dist/, rebuilt from the current
  // source), so its RSS is not inflated by tsx.
  ensureBuilt({ always: true });
  const d = await spawnDaemon(
    [
      '--data-dir',
      dataDir,
      '--images-dir',
      images,
      '--listen',
      '127.0.0.1:0',
      '--host-id',
      HOST_ID,
    ],
    { bundle: 'dist' },
  );
  const c = await rpcClient(d);
  const pids: number[] = [];
  try {
    for (let i = 0; i < 50; i++) await c.call('vm.create', { name: `rss-${i}` });
    for (let i = 0; i < 4; i++) {
      const vm = ok(
        await c.call('vm.start', { vm: `rss-${i}`, wait: true }, { timeoutMs: 300_000 }),
      );
      if (vm.pid) pids.push(vm.pid);
    }
    const status = readFileSync(`/proc/${d.pid}/status`, 'utf8');
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
    const mib = kb / 1024;
    return [
      {
        name: `mvirtd RSS, 50 defined + ${pids.length} running VMs`,
        value: round(mib, 1),
        unit: 'MiB',
        ratio: mib / 120,
        target: '<= 1',
        note: 'ratio is RSS ÷ 120 MiB',
      },
    ];
  } finally {
    for (let i = 0; i < pids.length; i++)
      await c.call('vm.kill', { vm: `rss-${i}` }, { timeoutMs: 30_000 });
    c.mqtt.end(true);
    await stopProcess(d);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await removeDir(dataDir);
  }
}

function timeIt(fn: () => unknown, runs = 10): number {
  fn();
  fn();
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) fn();
  return (performance.now() - t0) / runs;
}

export default async function bench(emit: (rows: BenchRow[]) => void): Promise<BenchRow[]> {
  // Each stage's rows are kept if a later one fails.
  emit(await rpcVersusEcho());
  emit(await listVersusRaw());
  return rss();
}
