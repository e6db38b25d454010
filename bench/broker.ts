/**
 * The embedded broker against Debian's mosquitto under the same load (same
 * load generator in its own process, same message count), and the raw
 * publish/subscribe echo round trip that the RPC bench compares against.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createBroker } from '../host/broker/index.js';
import { silentLogger } from '../host/log.js';
import { TEST_ADMIN } from '../harness/test-admin.js';
import {
  echoRoundTrip,
  runLoadInChild,
  startMosquitto,
  type BenchRow,
  type LoadOptions,
} from './lib.js';

const ROOT = 'mvirt/bench';

const LOADS: Array<{ label: string; load: Omit<LoadOptions, 'url'> }> = [
  {
    label: 'QoS 0',
    load: {
      publishers: 4,
      subscribers: 4,
      messages: 30_000,
      qos: 0,
      payloadBytes: 64,
      window: 500,
    },
  },
  {
    label: 'QoS 1',
    load: {
      publishers: 4,
      subscribers: 4,
      messages: 10_000,
      qos: 1,
      payloadBytes: 64,
      window: 500,
    },
  },
];

/**
 * Best of three runs per broker, interleaved (E M E M E M) after a short
 * warm-up of each, so a burst of load from elsewhere on the machine hits both
 * sides alike instead of skewing the ratio.
 */
async function compare(
  embeddedUrl: string,
  mosquittoUrl: string,
  load: Omit<LoadOptions, 'url'>,
): Promise<{ embedded: number; mosquitto: number }> {
  const warm = { ...load, messages: Math.ceil(load.messages / 10) };
  await runLoadInChild({ ...warm, url: embeddedUrl });
  await runLoadInChild({ ...warm, url: mosquittoUrl });
  let embedded = 0;
  let mosquitto = 0;
  for (let round = 0; round < 3; round++) {
    embedded = Math.max(
      embedded,
      (await runLoadInChild({ ...load, url: embeddedUrl })).deliveredPerSec,
    );
    mosquitto = Math.max(
      mosquitto,
      (await runLoadInChild({ ...load, url: mosquittoUrl })).deliveredPerSec,
    );
  }
  return { embedded, mosquitto };
}

export default async function brokerBench(): Promise<BenchRow[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-bench-broker-'));
  const broker = await createBroker(
    {
      root: ROOT,
      listen: '127.0.0.1:0',
      dataDir: dir,
      users: [{ username: TEST_ADMIN.username, passwordHash: TEST_ADMIN.passwordHash }],
    },
    silentLogger(),
  );
  const mosquitto = await startMosquitto();
  // TCP controllers log in (loopback is not an identity); the login is per connection only.
  const embeddedUrl = `mqtt://${TEST_ADMIN.username}:${TEST_ADMIN.password}@${broker.addresses.tcp}`;
  const rows: BenchRow[] = [];
  try {
    for (const { label, load } of LOADS) {
      const shape = `${load.publishers} pub → ${load.subscribers} sub, ${load.messages} msgs × ${load.payloadBytes} B`;
      const { embedded, mosquitto: mosq } = await compare(embeddedUrl, mosquitto.url, load);
      rows.push(
        {
          name: `broker ${label} embedded`,
          value: Math.round(embedded),
          unit: 'msg/s',
          note: shape,
        },
        { name: `broker ${label} mosquitto`, value: Math.round(mosq), unit: 'msg/s', note: shape },
        {
          name: `broker ${label} embedded ÷ mosquitto`,
          value: embedded / mosq,
          unit: 'ratio',
          ratio: embedded / mosq,
          target: '>= 0.7',
        },
      );
    }
    const echo = await echoRoundTrip({ bus: broker, url: embeddedUrl, root: ROOT, count: 3000 });
    // The median is the figure to compare (RPC bench): the mean on a shared
    // 2-core machine is dominated by whatever else runs.
    rows.push({
      name: 'broker raw echo round trip (p50)',
      value: echo.p50Ms,
      unit: 'ms',
      note: `mean ${echo.meanMs.toFixed(3)} ms, p99 ${echo.p99Ms.toFixed(3)} ms, ${echo.count} sequential`,
    });
  } finally {
    await mosquitto.stop();
    await broker.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
