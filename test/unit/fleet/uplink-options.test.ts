/**
 * --uplink options (typed errors that say what to do), the outbox bounds and
 * which topics reach the uplink.
 */
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../../protocol/errors.js';
import { parseOptions } from '../../../host/daemon/options.js';
import { createOutbox } from '../../../host/uplink/outbox.js';
import { mirrored, replyClientId, uplinkSender } from '../../../host/uplink/mirror.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

let dir: string;
let creds: string;

before(async () => {
  dir = await makeTempDir('mvirt-uplink-opts-');
  creds = path.join(dir, 'creds.json');
  await writeFile(creds, JSON.stringify({ username: 'h1', password: 's3cret' }), { mode: 0o600 });
});
after(() => removeDir(dir));

const parse = (...args: string[]) =>
  parseOptions(['--host-id', 'h1', '--bridge', 'off', '--network', 'none', ...args], {}, false);

/** The CONFIG_INVALID error of these arguments. */
function refusal(...args: string[]): { option: unknown; message: string } {
  try {
    parse(...args);
  } catch (err) {
    assert.ok(err instanceof MvirtError, String(err));
    assert.equal(err.code, 'CONFIG_INVALID');
    return {
      option: (err.details as { option?: unknown } | undefined)?.option,
      message: err.message,
    };
  }
  assert.fail(`accepted ${args.join(' ')}`);
}

describe('--uplink options', () => {
  test('a URL and a credentials file give the link, its identity and its access', () => {
    const o = parse('--uplink', 'mqtt://broker.example:1883', '--uplink-credentials', creds);
    assert.deepEqual(
      { ...o.uplink, ca: o.uplink?.ca },
      {
        url: 'mqtt://broker.example:1883',
        broker: 'broker.example:1883',
        username: 'h1',
        password: 's3cret',
        ca: null,
        access: { role: 'operator', scope: null },
        keepaliveS: 30,
        bufferMessages: 10_000,
        retainedTopics: 100_000,
      },
    );
    assert.equal(parse().uplink, null);
  });

  test('bad input is refused naming the option and what to do', async () => {
    assert.match(refusal('--uplink', 'http://x:1').message, /scheme must be mqtt or mqtts/);
    assert.match(refusal('--uplink', 'mqtt://x').message, /explicit port/);
    assert.match(refusal('--uplink', 'not a url').message, /expected mqtt:\/\/HOST:PORT/);
    assert.match(refusal('--uplink', 'mqtt://u:pw@x:1').message, /--uplink-credentials FILE/);
    assert.equal(refusal('--uplink-credentials', creds).option, 'uplink-credentials');
    assert.match(refusal('--uplink-credentials', creds).message, /needs --uplink/);
    const missing = refusal('--uplink', 'mqtt://x:1', '--uplink-credentials', path.join(dir, 'no'));
    assert.match(missing.message, /cannot read the credentials file .*ENOENT/);
    const notJson = path.join(dir, 'bad.json');
    await writeFile(notJson, 'username=h1', { mode: 0o600 });
    assert.match(
      refusal('--uplink', 'mqtt://x:1', '--uplink-credentials', notJson).message,
      /is not JSON/,
    );
    const extra = path.join(dir, 'extra.json');
    await writeFile(extra, JSON.stringify({ username: 'h1', password: 'x', role: 'admin' }), {
      mode: 0o600,
    });
    assert.match(
      refusal('--uplink', 'mqtt://x:1', '--uplink-credentials', extra).message,
      /exactly \{"username", "password"\}/,
    );
    const open = path.join(dir, 'open.json');
    await writeFile(open, JSON.stringify({ username: 'h1', password: 'x' }));
    await chmod(open, 0o644);
    assert.match(
      refusal('--uplink', 'mqtt://x:1', '--uplink-credentials', open).message,
      /chmod 600/,
    );
    const notPem = path.join(dir, 'ca.pem');
    await writeFile(notPem, 'hello');
    const ca = refusal('--uplink', 'mqtts://x:8883', '--uplink-ca', notPem);
    assert.equal(ca.option, 'uplink-ca');
    assert.match(ca.message, /not a PEM certificate/);
    assert.match(refusal('--uplink', 'mqtt://x:1', '--uplink-ca', notPem).message, /mqtts:\/\//);
    assert.match(refusal('--uplink', 'mqtt://x:1', '--uplink-role', 'root').message, /viewer/);
  });
});

describe('the uplink outbox', () => {
  const msg = (topic: string, retain = false, payload = 'x') => ({
    topic,
    payload: Buffer.from(payload),
    qos: 0 as const,
    retain,
  });

  test('non-retained messages are bounded, oldest dropped first and counted', () => {
    const o = createOutbox({ maxQueued: 3, maxRetainedTopics: 10 });
    for (let i = 0; i < 5; i++) o.add(msg(`t/${i}`));
    assert.deepEqual(o.figures(), { queued: 3, dropped: 2, retainedTopics: 0 });
    assert.deepEqual(
      o.take(10).map((m) => m.topic),
      ['t/2', 't/3', 't/4'],
    );
    assert.equal(o.figures().queued, 0);
  });

  test('retained state keeps the last payload per topic; a tombstone stays until sent', () => {
    const o = createOutbox({ maxQueued: 3, maxRetainedTopics: 2 });
    o.add(msg('vm/a', true, '1'));
    o.add(msg('vm/b', true, '1'));
    o.add(msg('vm/a', true, '2'));
    assert.deepEqual(
      o.retained().map((m) => `${m.topic}=${m.payload.toString()}`),
      ['vm/b=1', 'vm/a=2'],
    );
    o.add(msg('vm/b', true, ''));
    assert.equal(o.figures().retainedTopics, 1);
    assert.equal(o.retained().length, 2, 'the empty payload is still owed to the broker');
    o.sentTombstone('vm/b');
    assert.deepEqual(
      o.retained().map((m) => m.topic),
      ['vm/a'],
    );
    o.add(msg('vm/c', true));
    o.add(msg('vm/d', true));
    assert.deepEqual(
      o.retained().map((m) => m.topic),
      ['vm/c', 'vm/d'],
    );
    assert.equal(o.figures().dropped, 1, 'the oldest topic beyond the bound is dropped');
  });

  test('retained updates are pending until taken, latest payload only; a reconnect owes them all again', () => {
    const o = createOutbox({ maxQueued: 3, maxRetainedTopics: 10 });
    o.add(msg('vm/a', true, '1'));
    o.add(msg('vm/b', true, '1'));
    o.add(msg('vm/a', true, '2'));
    const text = (ms: { topic: string; payload: Buffer }[]) =>
      ms.map((m) => `${m.topic}=${m.payload.toString()}`);
    assert.deepEqual(text(o.takeRetained(1)), ['vm/b=1']);
    assert.deepEqual(text(o.takeRetained(10)), ['vm/a=2']);
    assert.deepEqual(o.takeRetained(10), [], 'nothing owed once handed to the link');
    o.add(msg('vm/b', true, '2'));
    assert.deepEqual(text(o.takeRetained(10)), ['vm/b=2']);
    o.resendRetained();
    assert.deepEqual(text(o.takeRetained(10)), ['vm/a=2', 'vm/b=2']);
  });
});

describe('--label', () => {
  test('K=V, repeatable, in the options; malformed or repeated keys are refused', () => {
    assert.deepEqual(parse('--label', 'gpu=false', '--label', 'zone=eu-1:a').labels, {
      gpu: 'false',
      zone: 'eu-1:a',
    });
    assert.deepEqual(parse().labels, {});
    for (const bad of [
      ['--label', 'gpu'],
      ['--label', 'a b=c'],
      ['--label', 'k=v/w'],
    ])
      assert.equal(refusal(...bad).option, 'label');
    assert.match(refusal('--label', 'k=1', '--label', 'k=2').message, /k is given twice/);
  });
});

describe('what reaches the uplink', () => {
  test('public topics only: no agent traffic, requests or console', () => {
    const root = 'mvirt/h1';
    for (const t of ['status', 'events', 'vm/v1/state', 'vm/v1/telemetry', 'job/j1/output'])
      assert.ok(mirrored(root, `${root}/${t}`), t);
    for (const t of ['agent/v1/up/hello', 'agent/v1/down/exec', 'rpc/vm.list', 'vm/v1/console/out'])
      assert.ok(!mirrored(root, `${root}/${t}`), t);
    assert.ok(!mirrored(root, 'mvirt/_clients/c1/replies'));
    assert.ok(!mirrored(root, 'mvirt/h10/status'));
  });

  test("an uplink request acts with the uplink's access as the client its reply topic names", () => {
    const senderOf = uplinkSender({
      prefix: 'mvirt',
      broker: 'b:1883',
      access: { role: 'viewer', scope: null },
    });
    const s = senderOf(
      'mvirt/h1/rpc/vm.list',
      Buffer.from('{"id":"1","replyTo":"mvirt/_clients/c7/replies"}'),
    );
    assert.deepEqual(s.actor, { kind: 'uplink', broker: 'b:1883', clientId: 'c7' });
    assert.deepEqual(s.access, { role: 'viewer', scope: null });
    assert.equal(s.replyRefusal('mvirt/_clients/c7/replies'), null);
    assert.match(s.replyRefusal('mvirt/h2/status') ?? '', /only to mvirt\/_clients/);
    assert.equal(senderOf('t', Buffer.from('not json')).actor.kind, 'uplink');
    assert.equal(replyClientId('mvirt', 'mvirt/_clients//replies'), null);
  });
});
