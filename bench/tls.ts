/**
 * What TLS and authentication cost a controller: `system.info` round trips
 * against a real mvirtd process over TLS with a logged-in user, ÷ the same
 * over plain loopback TCP (also logged in: anonymous TCP no longer exists).
 * The anonymous unix socket is shown beside them. The certificate is made
 * here with openssl (an EC P-256 key, as an operator would likely use);
 * each daemon runs alone, one after the other (2 cores).
 *
 * Target (issue 11): TLS+auth ÷ plain loopback ≤ 1.3 (median round trip).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import { brokerOptions } from '../protocol/client.js';
import { replyTopicFor } from '../protocol/topics.js';
import { spawnDaemon, type DaemonProcess } from '../harness/daemon.js';
import { measureRoundTrips, round, type BenchRow } from './lib.js';

const HOST = 'bench-tls';
const ROOT = `mvirt/${HOST}`;
const COUNT = 2000;

function makeCert(dir: string): void {
  const o = (...a: string[]): void =>
    void execFileSync('openssl', a, { cwd: dir, stdio: 'ignore' });
  o(
    ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=bench CA'],
  );
  o(
    ...['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'],
  );
  writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  o(
    ...['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key'],
    ...['-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf'],
  );
}

function tcpUrl(d: DaemonProcess, scheme: string): string {
  for (const line of d.logs) {
    const j = JSON.parse(line) as { msg?: string; addresses?: { tcp?: string } };
    if (j.msg === 'mvirtd ready' && j.addresses?.tcp) return `${scheme}://${j.addresses.tcp}`;
  }
  throw new Error('no TCP address in the "mvirtd ready" line');
}

async function roundTrips(url: string, extra: IClientOptions): Promise<number> {
  const b = brokerOptions(url);
  const clientId = `bench-tls-${process.pid}`;
  const opts: IClientOptions = {
    ...b.opts,
    ...extra,
    clientId,
    protocolVersion: 4,
    reconnectPeriod: 0,
  };
  const client = await (b.url ? mqtt.connectAsync(b.url, opts) : mqtt.connectAsync(opts));
  try {
    const replyTo = replyTopicFor('mvirt', clientId);
    const s = await measureRoundTrips({
      client,
      requestTopic: `${ROOT}/rpc/system.info`,
      replyTopic: replyTo,
      payload: (i) => JSON.stringify({ id: String(i), replyTo }),
      count: COUNT,
    });
    return s.p50Ms;
  } finally {
    await client.endAsync();
  }
}

async function withDaemon<T>(args: string[], fn: (d: DaemonProcess) => Promise<T>): Promise<T> {
  const d = await spawnDaemon(['--host-id', HOST, '--listen', '127.0.0.1:0', ...args]);
  try {
    return await fn(d);
  } finally {
    d.child.kill('SIGTERM');
    await d.exited;
  }
}

export default async function bench(): Promise<BenchRow[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-bench-tls-'));
  try {
    makeCert(dir);
    const data = (n: string): string[] => ['--data-dir', path.join(dir, n)];
    const plain = await withDaemon(data('plain'), async (d) => ({
      tcp: await roundTrips(tcpUrl(d, 'mqtt'), d.admin!),
      unix: await roundTrips(d.url, {}),
    }));
    const tls = await withDaemon(
      [
        ...data('tls'),
        ...['--tls-cert', path.join(dir, 'server.pem'), '--tls-key', path.join(dir, 'server.key')],
      ],
      (d) =>
        roundTrips(tcpUrl(d, 'mqtts'), {
          ...d.admin!,
          ca: readFileSync(path.join(dir, 'ca.pem')),
        }),
    );
    return [
      {
        name: 'system.info p50, plain loopback TCP, logged in',
        value: round(plain.tcp, 3),
        unit: 'ms',
      },
      { name: 'system.info p50, unix socket, anonymous', value: round(plain.unix, 3), unit: 'ms' },
      {
        name: 'system.info p50, TLS + login ÷ plain loopback',
        value: round(tls, 3),
        unit: 'ms',
        ratio: round(tls / plain.tcp, 3),
        target: '<= 1.3',
        note: `${COUNT} sequential round trips each; EC P-256 certificate`,
      },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
