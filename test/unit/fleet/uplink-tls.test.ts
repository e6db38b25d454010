/**
 * mvirtd --uplink mqtts:// to a Mosquitto with TLS on its hosts' listener:
 * with --uplink-ca naming the CA that signed the broker's certificate the
 * link comes up; without it (the system's CAs) every attempt fails on the
 * certificate and says so.
 */
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HostStatus } from '../../../protocol/rpc.js';
import { rpcClient } from '../../../harness/client.js';
import { hasMosquitto, startMosquitto, type MosquittoBroker } from '../../../harness/mosquitto.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { makeTestCerts, type TestCerts } from '../../../harness/test-certs.js';
import { cleanupAll, result, startJobDaemon } from '../../support/jobs.js';

const skip = hasMosquitto() ? false : 'mosquitto is not installed (scripts/install-deps.sh)';

describe('mvirtd --uplink mqtts:// with --uplink-ca', { skip }, () => {
  let mq: MosquittoBroker;
  let tmp: string;
  let certs: TestCerts;
  let creds: string;

  before(async () => {
    tmp = await makeTempDir('mvirt-uplink-tls-');
    certs = makeTestCerts(tmp);
    mq = await startMosquitto({
      hosts: { 'tls-host': 'pw-tls' },
      controllers: { alice: 'pw-alice' },
      hostsTls: { cert: certs.cert, key: certs.key },
    });
    creds = path.join(tmp, 'creds.json');
    await writeFile(creds, JSON.stringify({ username: 'tls-host', password: 'pw-tls' }));
    await chmod(creds, 0o600);
  });

  after(async () => {
    await cleanupAll();
    await mq.close();
    await removeDir(tmp);
  });

  const args = (...extra: string[]) => [
    '--host-id',
    'tls-host',
    '--uplink',
    `mqtts://localhost:${mq.hostsPort}`,
    '--uplink-credentials',
    creds,
    ...extra,
  ];

  test('without the CA every attempt fails on the certificate, and the uplink says so', async () => {
    const d = await startJobDaemon({ args: args() });
    const link = d.d.daemon.uplink!;
    // The next failed attempt (they repeat with backoff).
    await new Promise<void>((resolve) => link.onChange((up) => !up && resolve()));
    const info = result(await d.c.call('system.info', {})).uplink!;
    assert.equal(info.connected, false);
    assert.match(info.lastError ?? '', /certificate/i);
    await d.stopDaemon();
  });

  test('with --uplink-ca the link comes up and a controller on the broker sees the host', async () => {
    const d = await startJobDaemon({ args: args('--uplink-ca', certs.ca) });
    await d.d.daemon.uplink!.connected();
    const c = await rpcClient(
      { url: `mqtt://127.0.0.1:${mq.controllersPort}`, root: 'mvirt/tls-host' },
      { username: 'alice', password: 'pw-alice' },
    );
    try {
      const s = await c.waitFor(
        'mvirt/tls-host/status',
        (_t, p) => p.length > 0 && (JSON.parse(p.toString()) as HostStatus).online === true,
      );
      assert.equal((JSON.parse(s.toString()) as HostStatus).hostId, 'tls-host');
      assert.equal(
        result(await c.call('system.info', {})).uplink?.broker,
        `localhost:${mq.hostsPort}`,
      );
    } finally {
      await c.close();
    }
  });
});
