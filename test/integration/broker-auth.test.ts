/**
 * Controller authentication over real sockets: anonymous vs users with scrypt
 * hashes, the unix socket (the only place anonymous controllers are allowed,
 * named by their peer credentials), client id and will validation at CONNECT.
 */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { hashPassword } from '../../host/broker/passwords.js';
import { CONNACK, RawClient, encodeConnect } from '../../harness/broker-raw.js';
import { ROOT, connectClient, startBroker, type TestBroker } from '../support/broker-fixtures.js';

const cheap = { N: 1024, r: 8, p: 1 };

describe('password-only broker (allowAnonymous false)', () => {
  let t: TestBroker;
  before(async () => {
    t = await startBroker({
      allowAnonymous: false,
      users: [{ username: 'alice', passwordHash: await hashPassword('wonderland', cheap) }],
    });
  });
  after(() => t.close());

  test('a user with the right password connects', async () => {
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, {
      clientId: 'alice-1',
      username: 'alice',
      password: 'wonderland',
    });
    assert.equal(c.connected, true);
    await c.endAsync();
  });

  test('wrong password, unknown user and anonymous are refused with the right CONNACK', async () => {
    const cases: Array<[Record<string, string | undefined>, number]> = [
      [{ username: 'alice', password: 'wrong' }, CONNACK.BAD_USERNAME_OR_PASSWORD],
      [{ username: 'mallory', password: 'wonderland' }, CONNACK.BAD_USERNAME_OR_PASSWORD],
      [{ username: 'alice' }, CONNACK.BAD_USERNAME_OR_PASSWORD],
      [{ username: undefined }, CONNACK.NOT_AUTHORIZED],
    ];
    for (const [creds, code] of cases) {
      const raw = await RawClient.connect(t.tcpPort());
      assert.equal(await raw.handshake({ clientId: 'x1', ...creds }), code, JSON.stringify(creds));
      await raw.closed;
    }
    const e = await t.waitForLog((l) => l.msg === 'connection refused' && l.username === 'mallory');
    assert.equal(e.clientId, 'x1');
    assert.equal(e.level, 40);
  });

  test('two CONNECTs in one write get no second authentication and no second CONNACK', async () => {
    const raw = await RawClient.connect(t.tcpPort());
    const wrong = encodeConnect({ clientId: 'twice', username: 'alice', password: 'wrong' });
    raw.send(Buffer.concat([wrong, wrong]));
    const got: number[] = [];
    for (let p = await raw.next(); p; p = await raw.next()) got.push(p.type);
    assert.deepEqual(got, [], 'closed before any answer: a second CONNECT is a protocol violation');
    await t.waitForLog((l) => l.msg === 'connection dropped' && l.reason === 'second CONNECT');
  });

  test('mqtt.js sees "Not authorized" for an anonymous client', async () => {
    await assert.rejects(
      connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'anon', username: undefined }),
      (err: Error & { code?: number }) => err.code === CONNACK.NOT_AUTHORIZED,
    );
  });

  test('anonymous is refused on the unix socket too when not configured', async () => {
    const raw = await RawClient.connectUnix(t.broker.addresses.unix!);
    assert.equal(await raw.handshake({ clientId: 'u1' }), CONNACK.NOT_AUTHORIZED);
  });
});

describe('anonymous broker', () => {
  let t: TestBroker;
  before(async () => {
    t = await startBroker({ allowAnonymous: true });
  });
  after(() => t.close());

  test('anonymous controllers connect over the unix socket (mode 0660), named by their peer credentials', async () => {
    const u = await connectClient('mqtt://localhost', {
      clientId: 'anon-unix',
      unixSocket: true,
      path: t.broker.addresses.unix!,
    } as never);
    assert.equal(statSync(t.broker.addresses.unix!).mode & 0o777, 0o660);
    assert.equal(t.broker.clientCount(), 1);
    // The audit line names the local user on the other end (this process).
    const e = await t.waitForLog(
      (l) => l.msg === 'controller connected' && l.clientId === 'anon-unix',
    );
    const p = e.principal as { user: string | null; local: { uid: number; pid: number } | null };
    assert.equal(p.user, null);
    assert.deepEqual(
      { uid: p.local?.uid, pid: p.local?.pid },
      { uid: process.getuid!(), pid: process.pid },
    );
    await u.endAsync();
  });

  test('loopback is not an identity: anonymous TCP and WebSocket controllers are refused', async () => {
    const raw = await RawClient.connect(t.tcpPort(), '127.0.0.1');
    assert.equal(
      await raw.handshake({ clientId: 'from-here', username: undefined }),
      CONNACK.NOT_AUTHORIZED,
    );
    await raw.closed;
    const e = await t.waitForLog(
      (l) => l.msg === 'connection refused' && l.clientId === 'from-here',
    );
    assert.match(String(e.reason), /anonymous access only over the unix socket/);
    await assert.rejects(
      connectClient(t.broker.addresses.ws!, { clientId: 'ws-anon', username: undefined }),
      (err: Error & { code?: number }) => err.code === CONNACK.NOT_AUTHORIZED,
    );
  });

  test('bad client ids are refused with CONNACK 2 and logged', async () => {
    const bad = [
      'a/b',
      'a+b',
      'a#b',
      'nul\u0000id',
      'ctl\u0007',
      'new\nline',
      'x'.repeat(65),
      'agent-vm1', // reserved: would kick that VM's agent off
    ];
    for (const clientId of bad) {
      const raw = await RawClient.connect(t.tcpPort());
      assert.equal(
        await raw.handshake({ clientId }),
        CONNACK.IDENTIFIER_REJECTED,
        JSON.stringify(clientId),
      );
      await raw.closed;
    }
    await t.waitForLog((l) => l.msg === 'connection refused' && l.clientId === 'agent-vm1');
    // The broker is unharmed.
    const c = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'after-bad' });
    await c.endAsync();
  });

  test('an empty client id gets a generated one', async () => {
    const raw = await RawClient.connect(t.tcpPort());
    assert.equal(await raw.handshake({ clientId: '' }), CONNACK.ACCEPTED);
    raw.destroy();
  });

  test('controller wills must obey the publish ACL', async () => {
    const refused = [
      { topic: `${ROOT}/status`, payload: '{"online":false}', retain: true },
      { topic: `${ROOT}/vm/v1/state`, payload: '{}' },
      { topic: `${ROOT}/agent/v1/up/hello`, payload: '{}' },
      { topic: 'ctl/+/x', payload: '' },
    ];
    for (const will of refused) {
      const raw = await RawClient.connect(t.tcpPort());
      assert.equal(
        await raw.handshake({ clientId: 'w1', will }),
        CONNACK.NOT_AUTHORIZED,
        will.topic,
      );
    }
    const raw = await RawClient.connect(t.tcpPort());
    const will = { topic: 'ctl/w2/online', payload: 'false', retain: true };
    assert.equal(await raw.handshake({ clientId: 'w2', will }), CONNACK.ACCEPTED);
    raw.destroy();
  });
});
