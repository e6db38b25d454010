/** The QMP client against a scripted fake QMP server on a unix socket. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectQmp, QmpError, type QmpEvent } from '../../../host/hypervisors/qemu/qmp.js';
import { pino } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';

const quiet = () => pino({ level: 'silent' });
let dir = '';
let server: net.Server;
const clients = new Set<net.Socket>();

/** A fake QEMU monitor: greeting, capabilities, a few commands, events on demand. */
function startFake(sockPath: string): Promise<void> {
  server = net.createServer((c) => {
    clients.add(c);
    c.on('close', () => clients.delete(c));
    c.write(
      '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n',
    );
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: string };
        buf = buf.slice(nl + 1);
        const reply = (o: object) => c.write(JSON.stringify({ ...o, id: msg.id }) + '\r\n');
        switch (msg.execute) {
          case 'qmp_capabilities':
          case 'stop':
            reply({ return: {} });
            if (msg.execute === 'stop') {
              c.write(
                '{"timestamp": {"seconds": 1700000000, "microseconds": 5000}, "event": "STOP"}\r\n',
              );
            }
            break;
          case 'query-status':
            reply({ return: { status: 'paused', running: false, singlestep: false } });
            break;
          case 'quit':
            c.end(); // QEMU may close before the reply arrives
            break;
          case 'hang':
            break;
          default:
            reply({
              error: {
                class: 'CommandNotFound',
                desc: `The command ${msg.execute} has not been found`,
              },
            });
        }
      }
    });
  });
  return new Promise((r) => server.listen(sockPath, r));
}

describe('QMP client', () => {
  let sockPath = '';
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-qmp-'));
    sockPath = path.join(dir, 'qmp.sock');
  });
  after(async () => {
    for (const c of clients) c.destroy();
    server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('waits for a socket that appears later, handshakes, executes, emits events', async () => {
    const connecting = connectQmp(sockPath, { log: quiet(), connect: { timeoutMs: 5000 } });
    await startFake(sockPath); // after connect started: exercises the ENOENT retry
    const qmp = await connecting;
    assert.equal(qmp.greeting.version?.qemu?.major, 7);
    const events: QmpEvent[] = [];
    qmp.on('event', (e) => events.push(e));
    await qmp.execute('stop');
    const st = await qmp.execute('query-status');
    assert.equal(st.status, 'paused');
    assert.equal(events[0]?.event, 'STOP');
    assert.equal(events[0]?.at, 1_700_000_000_005);
    qmp.close();
    await qmp.closed;
  });

  it('maps QMP errors to HYPERVISOR_ERROR with the class and cause', async () => {
    const qmp = await connectQmp(sockPath, { log: quiet(), connect: { timeoutMs: 5000 } });
    await assert.rejects(qmp.executeRaw('nope'), (err: unknown) => {
      assert.ok(err instanceof MvirtError);
      assert.equal(err.code, 'HYPERVISOR_ERROR');
      assert.deepEqual(err.details, { command: 'nope', class: 'CommandNotFound' });
      assert.ok(err.cause instanceof QmpError);
      return true;
    });
    qmp.close();
  });

  it('treats quit as done when the connection closes; rejects pending and later commands on close', async () => {
    const qmp = await connectQmp(sockPath, {
      log: quiet(),
      connect: { timeoutMs: 5000 },
      commandTimeoutMs: 10_000,
    });
    const hanging = qmp.executeRaw('hang');
    await qmp.execute('quit');
    await qmp.closed;
    await assert.rejects(
      hanging,
      (e: unknown) => e instanceof MvirtError && e.code === 'HYPERVISOR_ERROR',
    );
    await assert.rejects(
      qmp.execute('cont'),
      (e: unknown) => e instanceof MvirtError && /closed/.test(e.message),
    );
  });

  it('times out commands that get no reply', async () => {
    const qmp = await connectQmp(sockPath, {
      log: quiet(),
      connect: { timeoutMs: 5000 },
      commandTimeoutMs: 100,
    });
    await assert.rejects(
      qmp.executeRaw('hang'),
      (e: unknown) => e instanceof MvirtError && e.code === 'TIMEOUT',
    );
    qmp.close();
  });

  it('gives up connecting with TIMEOUT when the socket never appears', async () => {
    await assert.rejects(
      connectQmp(path.join(dir, 'never.sock'), {
        log: quiet(),
        connect: { timeoutMs: 200 },
      }),
      (e: unknown) => e instanceof MvirtError && e.code === 'TIMEOUT',
    );
  });
});
