/**
 * Guest isolation: an agent channel (a unix socket pair, like a virtio-serial
 * chardev socket) or a guest TCP connection with a token can publish only
 * below its own `agent/<vmId>/up/` and subscribe only below its own
 * `agent/<vmId>/down/`, with no retained messages and no will outside that.
 */
import assert from 'node:assert/strict';
import type net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { MvirtError } from '../../protocol/errors.js';
import { CONNACK, RawClient, encodeConnect, encodePublish } from '../../harness/broker-raw.js';
import {
  ROOT,
  closedOf,
  connectClient,
  connectOverStream,
  daemonInbox,
  inbox,
  socketPair,
  startBroker,
  withTimeout,
  type TestBroker,
} from '../support/broker-fixtures.js';

const encodeConnectOf = (clientId: string) => encodeConnect({ clientId, keepalive: 30 });
const up = (vm: string, kind = 'hello') => `${ROOT}/agent/${vm}/up/${kind}`;
const down = (vm: string, kind = 'exec') => `${ROOT}/agent/${vm}/down/${kind}`;

describe('agent channel isolation', () => {
  let t: TestBroker;
  before(async () => {
    t = await startBroker({
      guestListen: '127.0.0.1:0',
      verifyAgentToken: (vmId, token) => vmId === 'vm-tcp' && token === 'tok-256-bits',
    });
  });
  after(() => t.close());

  async function channel(vmId: string): Promise<{ guest: net.Socket; closed: Promise<void> }> {
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel(vmId, host);
    return { guest, closed: handle.closed };
  }

  async function rawChannel(vmId: string): Promise<{ raw: RawClient; closed: Promise<void> }> {
    const { guest, closed } = await channel(vmId);
    return { raw: new RawClient(guest), closed };
  }

  test('the agent publishes up/ to the daemon and receives down/ from it', async () => {
    const daemon = await daemonInbox(t.broker, `${ROOT}/agent/+/up/#`);
    const { guest } = await channel('vm-1');
    const agent = await connectOverStream(guest, { clientId: 'agent-vm-1' });
    const box = inbox(agent);
    await agent.subscribeAsync(`${ROOT}/agent/vm-1/down/+`, { qos: 1 });
    await agent.publishAsync(up('vm-1'), '{"hello":1}', { qos: 1 });
    await daemon.wait(up('vm-1'));
    await t.broker.publish(down('vm-1'), 'run', { qos: 1 });
    assert.equal(await box.wait(down('vm-1')), 'run');
    await agent.endAsync();
    await daemon.unsubscribe();
  });

  test('an empty client id becomes agent-<vmId>; any other id is refused', async () => {
    const a = await rawChannel('vm-2');
    assert.equal(await a.raw.handshake({ clientId: '' }), CONNACK.ACCEPTED);
    await t.waitForLog((l) => l.msg === 'client connected' && l.clientId === 'agent-vm-2');
    a.raw.destroy();
    await a.closed;
    for (const forged of ['agent-vm-3', 'ctl-admin', 'agent-vm-2x', 'mvirtd']) {
      const b = await rawChannel('vm-2');
      assert.equal(
        await b.raw.handshake({ clientId: forged }),
        CONNACK.IDENTIFIER_REJECTED,
        forged,
      );
      await b.closed;
    }
    // Credentials change nothing: the channel is the identity.
    const c = await rawChannel('vm-2');
    assert.equal(
      await c.raw.handshake({ clientId: 'agent-vm-9', username: 'vm-9', password: 'x' }),
      CONNACK.IDENTIFIER_REJECTED,
    );
  });

  test('subscriptions outside its own down/ are refused', async () => {
    const { raw } = await rawChannel('vm-3');
    assert.equal(await raw.handshake({ clientId: 'agent-vm-3' }), CONNACK.ACCEPTED);
    const filters = [
      '#',
      '+/#',
      '$SYS/#',
      `${ROOT}/#`,
      `${ROOT}/rpc/+`,
      `${ROOT}/agent/#`,
      `${ROOT}/agent/+/down/#`,
      `${ROOT}/agent/vm-3/#`,
      `${ROOT}/agent/vm-3/+/exec`,
      `${ROOT}/agent/vm-4/down/#`,
      `${ROOT}/vm/vm-3/state`,
    ];
    assert.deepEqual(
      await raw.subscribe(filters),
      filters.map(() => 0x80),
    );
    assert.deepEqual(await raw.subscribe([`${ROOT}/agent/vm-3/down/#`], 2), [0]);
    raw.destroy();
  });

  test("another VM does not see this VM's down/ traffic", async () => {
    const a = await connectOverStream((await channel('vm-a')).guest, { clientId: 'agent-vm-a' });
    const b = await connectOverStream((await channel('vm-b')).guest, { clientId: 'agent-vm-b' });
    const boxB = inbox(b);
    await b.subscribeAsync(`${ROOT}/agent/vm-b/down/#`);
    await a.subscribeAsync(`${ROOT}/agent/vm-a/down/#`);
    await t.broker.publish(down('vm-a'), 'for-a');
    await t.broker.publish(down('vm-b'), 'for-b');
    assert.equal(await boxB.wait(down('vm-b')), 'for-b');
    assert.deepEqual(boxB.topics(), [down('vm-b')]);
    await Promise.all([a.endAsync(), b.endAsync()]);
  });

  test('publishing outside its own up/, or retained, closes the channel', async () => {
    const watcher = await connectClient(`mqtt://${t.broker.addresses.tcp}`, {
      clientId: 'watch-agents',
    });
    const box = inbox(watcher);
    await watcher.subscribeAsync('#');
    const daemon = await daemonInbox(t.broker, '#');
    const attempts: Array<[string, boolean]> = [
      [`${ROOT}/rpc/vm.delete`, false],
      [`${ROOT}/status`, false],
      [`${ROOT}/vm/vm-5/state`, false],
      [up('vm-6'), false],
      [down('vm-5'), false],
      [`${ROOT}/agent/vm-5/up`, false],
      ['$SYS/x', false],
      ['elsewhere/topic', false],
      [up('vm-5'), true],
    ];
    for (const [topic, retain] of attempts) {
      const { raw, closed } = await rawChannel('vm-5');
      assert.equal(await raw.handshake({ clientId: 'agent-vm-5' }), CONNACK.ACCEPTED);
      raw.send(encodePublish(topic, 'forged', { retain }));
      await withTimeout(closed, `channel closed after publish to ${topic}`);
      await t.waitForLog(
        (l) =>
          l.msg === 'publish refused, closing connection' &&
          l.topic === topic &&
          l.retain === retain,
      );
    }
    await t.broker.publish('fence/agent', 'x');
    await box.wait('fence/agent');
    await daemon.wait('fence/agent');
    assert.deepEqual(
      daemon.got.filter((g) => g.payload === 'forged'),
      [],
      'nothing forged was routed, not even to the daemon',
    );
    await daemon.unsubscribe();
    await watcher.endAsync();
  });

  test('wills: only non-retained, inside its own up/', async () => {
    const refused = [
      { topic: `${ROOT}/status`, payload: '{"online":false}', retain: true },
      { topic: `${ROOT}/vm/vm-w/state`, payload: '{}' },
      { topic: up('vm-other', 'log'), payload: 'x' },
      { topic: up('vm-w', 'log'), payload: 'x', retain: true },
      { topic: '$SYS/will', payload: 'x' },
    ];
    for (const will of refused) {
      const { raw, closed } = await rawChannel('vm-w');
      assert.equal(
        await raw.handshake({ clientId: 'agent-vm-w', will }),
        CONNACK.NOT_AUTHORIZED,
        will.topic,
      );
      await closed;
    }
    const daemon = await daemonInbox(t.broker, up('vm-w', 'log'));
    const { raw, closed } = await rawChannel('vm-w');
    const will = { topic: up('vm-w', 'log'), payload: 'agent gone' };
    assert.equal(await raw.handshake({ clientId: 'agent-vm-w', will }), CONNACK.ACCEPTED);
    raw.destroy(); // unclean: the will fires
    await closed;
    await daemon.wait(up('vm-w', 'log'));
    assert.equal(daemon.got[0]?.payload, 'agent gone');
    await daemon.unsubscribe();
  });

  test('a controller cannot send to an agent', async () => {
    const { guest } = await channel('vm-c');
    const agent = await connectOverStream(guest, { clientId: 'agent-vm-c' });
    const box = inbox(agent);
    await agent.subscribeAsync(`${ROOT}/agent/vm-c/down/#`);
    const ctl = await connectClient(`mqtt://${t.broker.addresses.tcp}`, { clientId: 'evil-ctl' });
    const closed = closedOf(ctl);
    ctl.publish(down('vm-c'), 'rm -rf /');
    await closed;
    await t.broker.publish(down('vm-c', 'ping'), 'fence');
    await box.wait(down('vm-c', 'ping'));
    assert.deepEqual(box.topics(), [down('vm-c', 'ping')]);
    await agent.endAsync();
  });

  test('guest TCP: VM id + token; same confinement', async () => {
    const url = `mqtt://${t.broker.addresses.guest}`;
    const agent = await connectClient(url, {
      clientId: 'agent-vm-tcp',
      username: 'vm-tcp',
      password: 'tok-256-bits',
    });
    await assert.rejects(
      agent.subscribeAsync(`${ROOT}/rpc/+`),
      (e: Error & { packet?: { granted?: number[] } }) => e.packet?.granted?.[0] === 0x80,
    );
    await agent.subscribeAsync(`${ROOT}/agent/vm-tcp/down/#`);
    await agent.endAsync();

    const cases: Array<[Parameters<RawClient['handshake']>[0], number]> = [
      [
        { clientId: 'agent-vm-tcp', username: 'vm-tcp', password: 'wrong' },
        CONNACK.BAD_USERNAME_OR_PASSWORD,
      ],
      [
        { clientId: 'agent-vm-x', username: 'vm-x', password: 'tok-256-bits' },
        CONNACK.BAD_USERNAME_OR_PASSWORD,
      ],
      [{ clientId: 'ctl' }, CONNACK.BAD_USERNAME_OR_PASSWORD],
      [
        { clientId: 'agent-vm-zz', username: 'vm-tcp', password: 'tok-256-bits' },
        CONNACK.IDENTIFIER_REJECTED,
      ],
      [{ clientId: '', username: 'vm-tcp', password: 'tok-256-bits' }, CONNACK.ACCEPTED],
    ];
    for (const [fields, code] of cases) {
      const raw = await RawClient.connect(t.guestPort());
      assert.equal(await raw.handshake(fields), code, JSON.stringify(fields));
      raw.destroy();
    }
  });

  test("a channel survives what a restart leaves in it: stale bytes, a dead client's CONNECT", async () => {
    // What QEMU hands a new host end after mvirtd was killed mid-job: the tail
    // of a packet from the old session, then the CONNECT of a guest client
    // that has since given up; the agent's live client connects after it.
    const { host, guest } = await socketPair(t.dir);
    const handle = t.broker.attachAgentChannel('vm-r', host);
    let restarts = 0;
    handle.onRestart?.(() => restarts++);
    const raw = new RawClient(guest);
    const tail = encodePublish(up('vm-r', 'output'), Buffer.alloc(500, 0x10)).subarray(200);
    raw.send(Buffer.concat([tail, encodeConnectOf('')]));
    const connack = await raw.next();
    assert.equal(connack?.type, 2, 'the stale CONNECT was answered');
    raw.socket.removeAllListeners('data');
    // The live client: exactly one CONNACK reaches it, then it works.
    const daemon = await daemonInbox(t.broker, up('vm-r'));
    const agent = await connectOverStream(guest, { clientId: 'agent-vm-r' });
    await agent.publishAsync(up('vm-r'), 'after restart', { qos: 1 });
    await daemon.wait(up('vm-r'));
    assert.equal(restarts, 1);
    assert.equal(host.destroyed, false, 'the channel stayed open');
    await daemon.unsubscribe();
    await agent.endAsync();
  });

  test('attachAgentChannel refuses a bad VM id', async () => {
    const { host } = await socketPair(t.dir);
    assert.throws(
      () => t.broker.attachAgentChannel('../vm', host),
      (e: unknown) => e instanceof MvirtError && e.code === 'INVALID_NAME',
    );
    host.destroy();
  });
});
