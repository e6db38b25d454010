/**
 * Hot-plug steps (vm/hotplug.ts) over the QEMU backend's hot-plug
 * (hypervisors/qemu/hotplug.ts) against a scripted QMP peer on a unix socket:
 * the exact QMP sequences, the link in the VM folder, rollback when
 * device_add fails, and a guest that never releases a disk.
 */
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { createQemuHotplug } from '../../../host/hypervisors/qemu/hotplug.js';
import { connectQmp, type QmpClient } from '../../../host/hypervisors/qemu/qmp.js';
import type { DiskSpec } from '../../../host/hypervisors/types.js';
import type { MvirtLogger } from '../../../host/log.js';
import {
  ATTACH_STEPS,
  DETACH_STEPS,
  runDiskSteps,
  type PlugCtx,
} from '../../../host/vm/hotplug.js';
import { MvirtError } from '../../../protocol/errors.js';

const VOL = 'vol-0123456789ab';
const quiet = pino({ level: 'silent' });

interface Sent {
  execute: string;
  arguments?: Record<string, unknown>;
}

/** What the peer does; reset before each test. */
const script = {
  failDeviceAdd: false,
  /** Emit DEVICE_DELETED after device_del (a guest that releases the disk). */
  release: true,
  deviceGone: false,
};
let sent: Sent[] = [];

let dir = '';
let server: net.Server;
let qmp: QmpClient;
const peers = new Set<net.Socket>();

function startPeer(sock: string): Promise<void> {
  server = net.createServer((c) => {
    peers.add(c);
    c.write(
      '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}\r\n',
    );
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as Sent & { id: string };
        buf = buf.slice(nl + 1);
        const reply = (o: object) => c.write(JSON.stringify({ ...o, id: msg.id }) + '\r\n');
        if (msg.execute === 'qmp_capabilities') {
          reply({ return: {} });
          continue;
        }
        sent.push({ execute: msg.execute, arguments: msg.arguments });
        if (msg.execute === 'device_add' && script.failDeviceAdd) {
          reply({
            error: { class: 'GenericError', desc: 'Bus pci.0 does not support hotplugging' },
          });
        } else if (msg.execute === 'device_del' && script.deviceGone) {
          reply({ error: { class: 'DeviceNotFound', desc: `Device '${VOL}' not found` } });
        } else {
          reply({ return: {} });
          if (msg.execute === 'device_del' && script.release) {
            const id = msg.arguments?.id as string;
            // QEMU first reports the virtio backend (no device id), then the device.
            c.write(
              `{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/${id}/virtio-backend"}}\r\n`,
            );
            c.write(
              `{"event": "DEVICE_DELETED", "data": {"device": "${id}", "path": "/machine/peripheral/${id}"}}\r\n`,
            );
          }
        }
      }
    });
  });
  return new Promise((r) => server.listen(sock, r));
}

let vmDir = '';
let volFile = '';
const handed: string[] = [];
const records = { record: 0, unrecord: 0 };

function plugCtx(timeoutMs = 5000): PlugCtx {
  const hp = createQemuHotplug({
    qmp,
    dir: vmDir,
    blkDriver: 'virtio-blk-pci',
    handOver: async (_d, disk) => void handed.push(disk.path),
    log: quiet,
  });
  const spec: DiskSpec = {
    path: volFile,
    name: `${VOL}.raw`,
    readOnly: false,
    shared: false,
    format: 'raw',
    serial: VOL,
    backing: [],
  };
  return {
    dir: vmDir,
    hp,
    volumes: {
      attach: {
        bootDisks: async () => [],
        diskSpec: async () => spec,
        linkNames: (id) => [`${id}.raw`],
      },
      files: {
        checkFile: async () => volFile,
        pathOf: (id, format) => path.join(dir, 'volumes', `${id}.${format}`),
      },
    },
    disk: { volume: VOL, readOnly: false },
    keep: () => new Set(),
    record: () => void records.record++,
    unrecord: () => void records.unrecord++,
    log: quiet as unknown as MvirtLogger,
    timeoutMs,
  };
}

const link = () => path.join(vmDir, `${VOL}.raw`);
const names = () => sent.map((s) => s.execute);

describe('disk hot-plug over QMP', () => {
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mvirt-hotplug-'));
    vmDir = path.join(dir, 'vm', 'vm-1');
    await mkdir(vmDir, { recursive: true });
    await mkdir(path.join(dir, 'volumes'));
    volFile = path.join(dir, 'volumes', `${VOL}.raw`);
    await writeFile(volFile, Buffer.alloc(4096));
    const sock = path.join(dir, 'qmp.sock');
    await startPeer(sock);
    qmp = await connectQmp(sock, { log: quiet, connect: { timeoutMs: 5000 } });
  });
  after(async () => {
    qmp.close();
    for (const c of peers) c.destroy();
    server.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    sent = [];
    Object.assign(script, { failDeviceAdd: false, release: true, deviceGone: false });
    Object.assign(records, { record: 0, unrecord: 0 });
    handed.length = 0;
    await rm(link(), { force: true });
  });

  it('attach: record, link, hand over, blockdev-add (file then format), device_add with the serial', async () => {
    await runDiskSteps(ATTACH_STEPS, plugCtx());
    assert.deepEqual(sent, [
      {
        execute: 'blockdev-add',
        arguments: {
          driver: 'file',
          'node-name': `f-${VOL}`,
          filename: link(),
          'read-only': false,
        },
      },
      {
        execute: 'blockdev-add',
        arguments: { driver: 'raw', 'node-name': `d-${VOL}`, file: `f-${VOL}`, 'read-only': false },
      },
      {
        execute: 'device_add',
        arguments: { driver: 'virtio-blk-pci', id: `disk-${VOL}`, drive: `d-${VOL}`, serial: VOL },
      },
    ]);
    assert.equal(
      statSync(link()).ino,
      statSync(volFile).ino,
      'the volume hard-linked into the VM folder',
    );
    assert.deepEqual(handed, [link()], 'the linked file handed over, not the volume path');
    assert.deepEqual(records, { record: 1, unrecord: 0 });
  });

  it('attach: device_add refused → blockdev-del of both nodes, link removed, record undone', async () => {
    script.failDeviceAdd = true;
    await assert.rejects(runDiskSteps(ATTACH_STEPS, plugCtx()), (err: unknown) => {
      assert.ok(err instanceof MvirtError);
      assert.equal(err.code, 'HYPERVISOR_ERROR');
      assert.match(err.message, /does not support hotplugging/);
      return true;
    });
    assert.deepEqual(names(), [
      'blockdev-add',
      'blockdev-add',
      'device_add',
      'blockdev-del',
      'blockdev-del',
    ]);
    assert.deepEqual(
      sent.slice(3).map((s) => s.arguments),
      [{ 'node-name': `d-${VOL}` }, { 'node-name': `f-${VOL}` }],
      'the format node first, then the file node under it',
    );
    assert.ok(!existsSync(link()), 'the link is gone');
    assert.ok(existsSync(volFile), 'the volume itself stays');
    assert.deepEqual(records, { record: 1, unrecord: 1 });
  });

  it('detach: device_del, wait for DEVICE_DELETED of that device, blockdev-del, unlink, record', async () => {
    await runDiskSteps(ATTACH_STEPS, plugCtx());
    sent = [];
    await runDiskSteps(DETACH_STEPS, plugCtx());
    assert.deepEqual(sent, [
      { execute: 'device_del', arguments: { id: `disk-${VOL}` } },
      { execute: 'blockdev-del', arguments: { 'node-name': `d-${VOL}` } },
      { execute: 'blockdev-del', arguments: { 'node-name': `f-${VOL}` } },
    ]);
    assert.ok(!existsSync(link()));
    assert.equal(records.record, 2, 'attach and detach each changed the record once');
  });

  it('detach: the guest never releases the disk → DISK_BUSY, nothing after device_del, disk kept', async () => {
    await runDiskSteps(ATTACH_STEPS, plugCtx());
    sent = [];
    script.release = false;
    const t0 = performance.now();
    await assert.rejects(runDiskSteps(DETACH_STEPS, plugCtx(300)), (err: unknown) => {
      assert.ok(err instanceof MvirtError);
      assert.equal(err.code, 'DISK_BUSY');
      assert.deepEqual(err.details, { serial: VOL, timeoutMs: 300 });
      return true;
    });
    assert.ok(performance.now() - t0 >= 290, 'waited the timeout');
    assert.deepEqual(names(), ['device_del'], 'no blockdev-del while the device may be in use');
    assert.equal(statSync(link()).ino, statSync(volFile).ino, 'still linked');
    assert.equal(records.record, 1, 'still recorded (only the attach changed it)');
  });

  it('detach again after the guest let go late (device already gone): finishes the job', async () => {
    await runDiskSteps(ATTACH_STEPS, plugCtx());
    sent = [];
    script.deviceGone = true;
    await runDiskSteps(DETACH_STEPS, plugCtx(300));
    assert.deepEqual(names(), ['device_del', 'blockdev-del', 'blockdev-del']);
    assert.ok(!existsSync(link()));
  });
});
