/**
 * TLS on the controller listeners of a real mvirtd process: certificates made
 * here with openssl (a test CA, a server certificate for 127.0.0.1). Debian's
 * mosquitto_sub reads the retained status over TLS with --cafile; plaintext
 * MQTT and HTTP are refused where TLS is on; the CLI speaks it with --cafile;
 * headless Chromium loads the dashboard over https (trusting only the test
 * certificate's key) and its page connects over wss; SIGHUP swaps in a
 * renewed certificate for new connections without a restart.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { runCli } from '../../host/cli/run.js';
import { launchBrowser, skipNoBrowser } from '../../harness/browser.js';
import { memoryIo } from '../support/cli-io.js';
import { spawnDaemon, type DaemonProcess } from '../../harness/daemon.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'mvirt-tls-'));
const f = (n: string): string => path.join(dir, n);
const openssl = (...args: string[]): string =>
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** A CA, and a server certificate for 127.0.0.1 signed by it (`name` differs per issue). */
function makeServerCert(name: string): void {
  openssl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=mvirt test CA',
  );
  openssl(
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    f('server.key.new'),
    '-out',
    f('server.csr'),
    '-subj',
    `/CN=${name}`,
  );
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.pem.new'),
    '-days',
    '2',
    '-extfile',
    f('ext.cnf'),
  );
  execFileSync('mv', [f('server.key.new'), f('server.key')]);
  execFileSync('mv', [f('server.pem.new'), f('server.pem')]);
}

let d: DaemonProcess;
let ports: { mqtt: number; ws: number; http: number };
const HOST = 'tls-host';
const ROOT = `mvirt/${HOST}`;

function boundPorts(p: DaemonProcess): typeof ports {
  for (const line of p.logs) {
    const j = JSON.parse(line) as {
      msg?: string;
      addresses?: { tcp?: string; ws?: string };
      http?: string;
    };
    if (j.msg !== 'mvirtd ready') continue;
    const port = (s: string | undefined): number => Number(/:(\d+)(\/|$)/.exec(s ?? '')?.[1]);
    return { mqtt: port(j.addresses?.tcp), ws: port(j.addresses?.ws), http: port(j.http) };
  }
  throw new Error('no "mvirtd ready" line');
}

function waitForLog(p: DaemonProcess, re: RegExp, after = 0): Promise<string> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no log line matching ${re}`)), 20_000);
    const check = (): void => {
      const hit = p.logs.slice(after).find((l) => re.test(l));
      if (hit) {
        clearTimeout(t);
        p.child.stderr!.off('data', check);
        resolve(hit);
      }
    };
    p.child.stderr!.on('data', check);
    check();
  });
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout.on('data', (b: Buffer) => (out += b.toString()));
  c.stderr.on('data', (b: Buffer) => (out += b.toString()));
  return once(c, 'exit').then(([code]) => ({ code: code as number | null, out }));
}

before(async () => {
  makeServerCert('first');
  d = await spawnDaemon([
    '--data-dir',
    f('data'),
    '--host-id',
    HOST,
    '--listen',
    '127.0.0.1:0',
    '--ws-listen',
    '127.0.0.1:0',
    '--http',
    '127.0.0.1:0',
    '--tls-cert',
    f('server.pem'),
    '--tls-key',
    f('server.key'),
  ]);
  ports = boundPorts(d);
});
after(async () => {
  d?.child.kill('SIGTERM');
  await d?.exited;
  rmSync(dir, { recursive: true, force: true });
});

const login = (): string[] => ['-u', d.admin!.username, '-P', d.admin!.password];

test('mosquitto_sub --cafile reads the retained status over TLS', async () => {
  const r = await run('mosquitto_sub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(ports.mqtt),
    '--cafile',
    f('ca.pem'),
    ...login(),
    '-t',
    `${ROOT}/status`,
    '-C',
    '1',
    '-W',
    '20',
    '-v',
  ]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, new RegExp(`^${ROOT}/status \\{.*"online":true`));
});

test('plaintext is refused where TLS is on: MQTT, WebSocket and HTTP', async () => {
  const mark = d.logs.length;
  const r = await run('mosquitto_sub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(ports.mqtt),
    ...login(),
    '-t',
    `${ROOT}/status`,
    '-C',
    '1',
    '-W',
    '10',
  ]);
  assert.notEqual(r.code, 0, `plaintext MQTT must fail: ${r.out}`);
  await waitForLog(d, /TLS handshake failed/, mark);
  for (const port of [ports.ws, ports.http]) {
    const s = net.connect(port, '127.0.0.1');
    await once(s, 'connect');
    s.end('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
    let got = '';
    s.on('data', (b: Buffer) => (got += b.toString('latin1')));
    await once(s, 'close');
    assert.doesNotMatch(got, /^HTTP\/1\.1 [1-5]\d\d/, `no plaintext HTTP answer on ${port}`);
  }
  // And with TLS but no login, HTTP still asks for one.
  const res = await new Promise<number>((resolve, reject) => {
    const s = tls.connect(
      { host: '127.0.0.1', port: ports.http, ca: execFileSync('cat', [f('ca.pem')]) },
      () => s.end('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
    );
    let got = '';
    s.on('data', (b: Buffer) => (got += b.toString()));
    s.on('end', () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1])));
    s.on('error', reject);
  });
  assert.equal(res, 401);
});

test('the CLI speaks TLS with --cafile (and fails without it)', async () => {
  const env = { MVIRT_PASSWORD: d.admin!.password };
  const broker = `mqtts://127.0.0.1:${ports.mqtt}`;
  const common = ['--broker', broker, '--user', d.admin!.username, '--host', HOST, '--json'];
  const good = memoryIo({ env });
  assert.equal(await runCli(['info', ...common, '--cafile', f('ca.pem')], good), 0, good.errText());
  assert.equal((JSON.parse(good.out()) as { hostId: string }).hostId, HOST);
  const bad = memoryIo({ env });
  assert.equal(await runCli(['info', ...common], bad), 3, 'an unknown CA is a connection failure');
});

test(
  'headless Chromium loads the dashboard over https and connects over wss',
  { skip: skipNoBrowser, timeout: 120_000 },
  async () => {
    // Trust exactly the test server's key (chromium has no per-profile CA store flag).
    const spki = execFileSync('sh', [
      '-c',
      `openssl x509 -in ${f('server.pem')} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
    ])
      .toString()
      .trim();
    const browser = await launchBrowser({
      httpCredentials: d.admin!,
      args: [`--ignore-certificate-errors-spki-list=${spki}`],
    });
    try {
      const page = await browser.context.newPage();
      const res = await page.goto(`https://127.0.0.1:${ports.http}/`);
      assert.equal(res?.status(), 200);
      await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 60_000 });
      assert.equal(
        await page.evaluate(
          () => (globalThis as unknown as { location: { protocol: string } }).location.protocol,
        ),
        'https:',
      );
    } finally {
      await browser.close();
    }
  },
);

test('SIGHUP: a renewed certificate serves new connections, without a restart', async () => {
  const subjectCN = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const s = tls.connect(
        { host: '127.0.0.1', port: ports.mqtt, ca: execFileSync('cat', [f('ca.pem')]) },
        () => {
          resolve(String(s.getPeerCertificate().subject.CN));
          s.destroy();
        },
      );
      s.on('error', reject);
    });
  assert.equal(await subjectCN(), 'first');
  makeServerCert('renewed'); // a new CA too: ca.pem is rewritten
  const mark = d.logs.length;
  d.child.kill('SIGHUP');
  await waitForLog(d, /TLS certificate and key reloaded/, mark);
  assert.equal(await subjectCN(), 'renewed');
  assert.equal(d.child.exitCode, null, 'mvirtd still runs');
});
