/**
 * With a users file, the HTTP listener refuses everything without valid
 * credentials (/metrics, the dashboard and its assets, /session), and the
 * dashboard's MQTT-over-WebSocket login is a short-lived token that only
 * /session hands out: accepted over WebSocket for its user, refused
 * elsewhere. A real browser with the right credentials gets a connected page.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import mqtt from 'mqtt';
import { hashPassword } from '../../../host/broker/passwords.js';
import { DashboardSession } from '../../../protocol/http.js';
import { launchBrowser, skipNoBrowser } from '../../../harness/browser.js';
import { createFakeHypervisor, killFakes } from '../../../harness/fake-vms.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';
import { startTestDaemon, type TestDaemon } from '../../../harness/daemon.js';

const USER = 'alice';
const PASSWORD = 'correct horse';
const basic = (u: string, p: string): string =>
  `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

let d: TestDaemon;
let http: string;
const hv = createFakeHypervisor();
before(async () => {
  const dataDir = await makeTempDir('mvirt-http-auth-');
  const users = path.join(dataDir, 'users.json');
  await writeFile(
    users,
    JSON.stringify({ users: [{ username: USER, passwordHash: await hashPassword(PASSWORD) }] }),
  );
  d = await startTestDaemon({ dataDir, hypervisors: [hv], args: ['--users', users] });
  http = d.daemon.http!.url;
});
after(async () => {
  await d.stop();
  killFakes(hv);
  await removeDir(d.dataDir);
});

const get = (p: string, auth?: string): Promise<Response> =>
  fetch(`${http}${p}`, auth ? { headers: { authorization: auth } } : {});

async function session(): Promise<DashboardSession> {
  const r = await get('/session', basic(USER, PASSWORD));
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  return DashboardSession.parse(await r.json());
}

/** CONNECT over a given URL: resolves with the client, or rejects with the broker's refusal. */
function connect(url: string, username?: string, password?: string): Promise<mqtt.MqttClient> {
  return mqtt.connectAsync(url, {
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ...(username !== undefined ? { username, password: password ?? '' } : {}),
  });
}

test('without credentials, or with wrong ones, every HTTP path answers 401', async () => {
  for (const p of ['/metrics', '/', '/index.html', '/assets/dashboard.js', '/session']) {
    for (const auth of [undefined, basic(USER, 'wrong'), basic('mallory', PASSWORD), 'Bearer x']) {
      const r = await get(p, auth);
      assert.equal(r.status, 401, `${p} with ${auth ?? 'nothing'}`);
      assert.match(r.headers.get('www-authenticate') ?? '', /^Basic realm="mvirt"/);
      assert.equal(await r.text(), 'authentication required\n', 'no content leaks');
    }
  }
});

test('with the user password, /metrics and the dashboard are served', async () => {
  const m = await get('/metrics', basic(USER, PASSWORD));
  assert.equal(m.status, 200);
  assert.match(await m.text(), /^# HELP /m);
  const page = await get('/', basic(USER, PASSWORD));
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
  assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
  assert.match(await page.text(), /<script type="module" src="\/assets\/dashboard.js">/);
  const js = await get('/assets/dashboard.js', basic(USER, PASSWORD));
  assert.equal(js.status, 200);
  assert.ok((await js.arrayBuffer()).byteLength > 10_000, 'the bundle, not a stub');
  assert.equal((await get('/nope', basic(USER, PASSWORD))).status, 404);
  const post = await fetch(`${http}/metrics`, {
    method: 'POST',
    headers: { authorization: basic(USER, PASSWORD) },
  });
  assert.equal(post.status, 405);
});

test('the session token logs the page in over WebSocket as its user, and nowhere else', async () => {
  const s = await session();
  assert.equal(s.username, USER);
  assert.ok(s.password && s.password.length >= 40, 'a random token');
  assert.ok(s.expiresAt! > Date.now());
  assert.notEqual((await session()).password, s.password, 'a new token per page');
  const ws = `${http.replace(/^http/, 'ws')}${s.mqttPath}`;

  const c = await connect(ws, USER, s.password!);
  // A controller like any other: its RPC gets an answer on its reply topic.
  const reply = new Promise<string>((resolve) => c.on('message', (_t, p) => resolve(p.toString())));
  const replyTo = `mvirt/_clients/${c.options.clientId}/replies`; // its own namespace
  await c.subscribeAsync(replyTo);
  await c.publishAsync(`${d.root}/rpc/system.info`, JSON.stringify({ id: '1', replyTo }));
  assert.equal((JSON.parse(await reply) as { ok: boolean }).ok, true);
  await c.endAsync();

  // The user's real password works over WebSocket too; nothing else does.
  (await connect(ws, USER, PASSWORD)).end(true);
  await assert.rejects(connect(ws), /Not authorized|not authorized/i, 'anonymous');
  await assert.rejects(connect(ws, USER, 'x'.repeat(43)), /Bad username or password/i);
  await assert.rejects(
    connect(ws, 'mallory', s.password!),
    /Bad username or password/i,
    "another user's name",
  );
  await assert.rejects(
    connect(`mqtt://${d.daemon.broker.addresses.tcp!}`, USER, s.password!),
    /Bad username or password/i,
    'tokens are for WebSocket only',
  );
});

test(
  'in a real browser, the dashboard logs in with HTTP credentials and connects; without them it is refused',
  { skip: skipNoBrowser },
  async () => {
    const ok = await launchBrowser({ httpCredentials: { username: USER, password: PASSWORD } });
    try {
      const page = await ok.context.newPage();
      await page.goto(`${http}/`);
      await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 20_000 });
      await page.waitForSelector('.host[data-host="test-host"]');
    } finally {
      await ok.close();
    }
    const anon = await launchBrowser();
    try {
      const page = await anon.context.newPage();
      const statuses: number[] = [];
      page.on('response', (r) => statuses.push(r.status()));
      // Headless chromium cannot ask for a password: the 401 ends the navigation.
      await assert.rejects(page.goto(`${http}/`), /ERR_INVALID_AUTH_CREDENTIALS/);
      assert.deepEqual(statuses, [401]);
      assert.equal(await page.locator('#vms').count(), 0, 'no dashboard without credentials');
    } finally {
      await anon.close();
    }
  },
);
