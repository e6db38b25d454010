/**
 * QEMU's vsock (host/hypervisors/qemu/vsock.ts): CIDs, the host relay
 * (initramfs/src/vsock-connect.c --listen, built with this machine's cc as
 * mvirtd builds it) and the per-CID listeners.
 *
 * This machine has AF_VSOCK but no /dev/vhost-vsock and no vsock loopback:
 * the relay really binds and listens on vsock port 1024 here, but no guest
 * can dial it. Its relaying is checked in its `unix:PATH` mode (the client
 * writes the CID the kernel would have given), the same code past accept().
 * A plain file stands in for the device (only opened and handed to QEMU).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import {
  CID_FILE,
  createQemuVsock,
  pickCid,
  readCid,
  type QemuVsock,
} from '../../../host/hypervisors/qemu/vsock.js';
import { makeTempDir, removeDir } from '../../../harness/paths.js';

const log = pino({ level: 'silent' });
let tmp: string;
let vsock: QemuVsock;
const children: ChildProcess[] = [];

before(async () => {
  tmp = await makeTempDir('mvirt-qvsock-');
  writeFileSync(path.join(tmp, 'vhost-vsock'), '');
  mkdirSync(path.join(tmp, 'vm'));
  vsock = createQemuVsock(
    {
      dir: path.join(tmp, 'vsock'),
      cacheDir: path.join(tmp, 'cache'),
      device: path.join(tmp, 'vhost-vsock'),
    },
    log,
  );
});
after(async () => {
  vsock.close();
  for (const c of children) c.kill('SIGKILL');
  await removeDir(tmp);
});

const vmDir = (name: string) => {
  const d = path.join(tmp, 'vm', name);
  mkdirSync(d, { recursive: true });
  return d;
};

test('CIDs: the lowest free from 3, skipping those of other VM folders and those in flight', () => {
  const a = vmDir('cid-a');
  assert.equal(pickCid(a), 3);
  writeFileSync(path.join(vmDir('cid-b'), CID_FILE), '3\n');
  writeFileSync(path.join(vmDir('cid-c'), CID_FILE), '5\n');
  assert.equal(pickCid(a), 4);
  assert.equal(pickCid(a, new Set([4])), 6);
  // A folder's own CID does not count against it (a relaunch may take it again).
  writeFileSync(path.join(a, CID_FILE), '4\n');
  assert.equal(pickCid(a), 4);
  for (const bad of ['0', '2', 'abc', '4294967295', '-3', '3.5', ''])
    assert.equal(readCid((writeFileSync(path.join(a, CID_FILE), bad), a)), null, bad);
  for (const d of ['cid-a', 'cid-b', 'cid-c'])
    writeFileSync(path.join(tmp, 'vm', d, CID_FILE), 'none');
});

test('where the device or the folders are missing, there is no vsock and it says why', async () => {
  const none = createQemuVsock({ dir: null, cacheDir: null }, log);
  assert.match(none.unavailable ?? '', /no vsock folder/);
  const noDevice = createQemuVsock(
    { dir: tmp, cacheDir: tmp, device: path.join(tmp, 'no-such-device') },
    log,
  );
  assert.match(noDevice.unavailable ?? '', /no-such-device is missing .*vhost_vsock/);
  await assert.rejects(
    noDevice.lease(vmDir('nodev')),
    (e: unknown) => e instanceof MvirtError && e.code === 'CAPABILITY_UNSUPPORTED',
  );
  assert.equal(vsock.unavailable, null);
});

let relayBin: string;

test('a lease: the relay built and listening on vsock port 1024, a CID kept in the VM folder, its socket 0600', async () => {
  const dir = vmDir('v1');
  const lease = await vsock.lease(dir);
  try {
    assert.equal(lease.cid, 3);
    assert.equal(readFileSync(path.join(dir, CID_FILE), 'utf8'), '3\n');
    assert.equal(lease.listener.path, path.join(tmp, 'vsock', '3_1024'));
    assert.ok(lease.device.fd > 2, 'the device is open, for QEMU to inherit');
    assert.equal(statSync(lease.listener.path).mode & 0o777, 0o600);
    assert.equal(statSync(path.join(tmp, 'vsock')).mode & 0o777, 0o700);
    const bins = readdirSync(path.join(tmp, 'cache')).filter((n) => n.startsWith('vsock-relay-'));
    assert.equal(bins.length, 1, 'one relay, named by its source hash');
    relayBin = path.join(tmp, 'cache', bins[0]!);
    // A second mvirtd cannot have the port: the kernel refuses the bind, and it says so.
    const second = createQemuVsock(
      {
        dir: path.join(tmp, 'vsock2'),
        cacheDir: path.join(tmp, 'cache'),
        device: path.join(tmp, 'vhost-vsock'),
      },
      log,
    );
    await assert.rejects(
      second.lease(vmDir('v1b')),
      (e: unknown) =>
        e instanceof MvirtError &&
        e.code === 'BOOT_FAILED' &&
        /could not listen on port 1024: .*bind: Address already in use/.test(e.message),
    );
    // Another VM in flight gets another CID.
    const other = await vsock.lease(vmDir('v2'));
    assert.equal(other.cid, 4);
    await other.device.close();
    await other.listener.close();
    await vsock.release(path.join(tmp, 'vm', 'v2'));
  } finally {
    await lease.device.close();
    await lease.listener.close();
  }
  // An adopted VM (its CID in its folder) gets its listener back; released, the CID is free.
  const back = await vsock.reattach(dir);
  assert.equal(back?.path, path.join(tmp, 'vsock', '3_1024'));
  await back?.close();
  await vsock.release(dir);
  assert.equal(existsSync(path.join(dir, CID_FILE)), false);
  assert.equal(await vsock.reattach(dir), null, 'no CID, no vsock');
  assert.equal(pickCid(vmDir('v3')), 3);
});

/** The relay in its unix mode, relaying to `dir`'s per-CID sockets. */
async function unixRelay(dir: string): Promise<string> {
  const sock = path.join(tmp, `relay-${children.length}.sock`);
  const child = spawn(relayBin, ['--listen', '1024', dir, `unix:${sock}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  const [line] = (await once(child.stderr!, 'data')) as [Buffer];
  assert.equal(line.toString(), 'listening\n');
  return sock;
}

/** A guest's dial as the relay sees it: the CID first (what accept() gives), then the stream. */
async function dial(sock: string, cidLine: string): Promise<net.Socket> {
  const s = net.connect(sock);
  await once(s, 'connect');
  s.write(cidLine);
  return s;
}

const closedByRelay = (s: net.Socket) =>
  new Promise<string>((resolve) => {
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('error', () => undefined);
    s.on('close', () => resolve(got));
  });

test('the relay carries a guest to the socket of its CID, both ways, byte for byte, half-close passed on', async () => {
  const lease = await vsock.lease(vmDir('r1'));
  try {
    const sock = await unixRelay(path.join(tmp, 'vsock'));
    const guest = await dial(sock, `${lease.cid}\n`);
    const host = await lease.listener.accept(30_000);
    const up = randomBytes(3 * 1024 * 1024);
    const down = randomBytes(2 * 1024 * 1024 + 17);
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    const read = (s: net.Socket) =>
      new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        s.on('data', (d: Buffer) => parts.push(d));
        s.on('end', () => resolve(Buffer.concat(parts)));
      });
    const atHost = read(host);
    const atGuest = read(guest);
    guest.end(up);
    host.end(down);
    assert.equal(sha(await atHost), sha(up));
    assert.equal(sha(await atGuest), sha(down));
  } finally {
    await lease.device.close();
    await lease.listener.close();
    await vsock.release(path.join(tmp, 'vm', 'r1'));
  }
});

test('the relay closes a dial from a CID with no VM, from the host or hypervisor CIDs, and garbage', async () => {
  const lease = await vsock.lease(vmDir('r2'));
  try {
    const sock = await unixRelay(path.join(tmp, 'vsock'));
    for (const line of ['9\n', '2\n', '0\n', '1\n', 'x3\n', '3 3\n', '99999999999999\n', '']) {
      const s = await dial(sock, line);
      if (line === '') s.end();
      assert.equal(await closedByRelay(s), '', `closed at once: ${JSON.stringify(line)}`);
    }
    // The VM's own socket saw none of them, and still takes its guest.
    const ok = await dial(sock, `${lease.cid}\n`);
    const host = await lease.listener.accept(30_000);
    ok.write('ping');
    const [d] = (await once(host, 'data')) as [Buffer];
    assert.equal(d.toString(), 'ping');
    ok.destroy();
    host.destroy();
  } finally {
    await lease.device.close();
    await lease.listener.close();
    await vsock.release(path.join(tmp, 'vm', 'r2'));
  }
});
